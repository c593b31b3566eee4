"""Work spread over Ray workers: compress-many and eval --ray (Ray is the optional extra `ray`)."""
