"""VoCo instruction tuning: the differentiable two-stage forward, data, the loop, checkpoints,
batch scoring and the Table 1 experiment."""
