"""What the command modules share: the two consoles, common options, progress bars, quiet logs."""

from __future__ import annotations

from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ModelOpt = typer.Option(None, "--model", "-m", help="Checkpoint folder (or hub id when online).")
CompressorOpt = typer.Option(None, help="What each frame keeps: voco (the default for VoCo checkpoints), pool "
                             "(image tokens averaged to G x G: the default for checkpoints that never learned VoCo) "
                             "or full (every image token).")
PoolOpt = typer.Option(None, help="G of --compressor pool (default 4, at most the frame's grid); given alone, it "
                       "means --compressor pool.")
DeviceOpt = typer.Option("auto", help="cpu, cuda, cuda:1 ... (auto: GPU when present).")
DtypeOpt = typer.Option("auto", help="float32, bfloat16 or float16 (auto: bf16 on GPU, fp32 on CPU).")
DecodeOpt = typer.Option("auto", help="Answering path: dynamic (growing cache), static (pre-allocated cache), "
                         "graph (static + CUDA-graph decode step), compiled (graph with a torch.compile'd "
                         "step; compiles once per process and cache size); auto: graph on GPU, dynamic on CPU.")
WeightsOpt = typer.Option(None, "--weights", show_default=False, help="The language model's weights while answering: full (the "
                          "--dtype; the default), nf4 (bitsandbytes 4-bit) or int4 (torchao weight-only 4-bit; bfloat16 on GPU).")
Load4bitOpt = typer.Option(False, "--load-4bit", hidden=True, help="The same as --weights nf4 (an older spelling).")
# the answering options ask and chat share
CacheArg = typer.Argument(..., metavar="CACHE", help="A .voco cache made by `vococli compress` (ask also takes a "
                          "video file: VIDEO.voco is compressed first when missing, then reused).")
TemperatureOpt = typer.Option(0.0, help="0 = greedy; > 0 samples.")
TopPOpt = typer.Option(1.0, help="Nucleus sampling mass (with --temperature).")
SeedOpt = typer.Option(0, help="Seed for sampling.")
SubsampleOpt = typer.Option(False, help="Use evenly spaced frames when the cache exceeds the context.")
EvidenceOpt = typer.Option(False, "--evidence", help="Also say which frames each answer drew on: timestamps with "
                           "weights, from the answer's attention over each frame's cached tokens (decodes with "
                           "the dynamic path unless --decode static).")
ThreadsOpt = typer.Option(None, "--threads", metavar="N", show_default=False,
                          help="CPU threads to compute with (default: the CPUs this process may use, from its "
                          "affinity mask).")


def answer_weights(weights: str | None, load_4bit: bool) -> str:
    """The --weights value (full when not given), with --load-4bit as its older spelling of nf4."""
    from vococli.choices import Weights, check
    from vococli.errors import UserError

    if weights is None:
        return "nf4" if load_4bit else "full"
    check(weights, Weights, "weights")
    if load_4bit and weights != "nf4":
        raise UserError(f"--load-4bit means --weights nf4; it cannot be combined with --weights {weights}")
    return weights


def check_decode_device(decode: str, device: str) -> None:
    """Refuse an unknown --decode path, or a CUDA-only one without CUDA, before any model is loaded
    (the device itself is probed only when the path needs CUDA: that imports torch)."""
    from vococli.answer.paths import DECODE_PATHS, check_decode, check_decode_device as check_path

    check_decode(decode)
    if decode in DECODE_PATHS and DECODE_PATHS[decode].needs_cuda:
        from vococli.families.loading import resolve_device

        check_path(decode, resolve_device(device).type)


def model_path(model: str | None) -> str:
    """The --model value, else $VOCOCLI_MODEL, else the bundled default model."""
    if model:
        return model
    from vococli.defaults import default_model_path

    return default_model_path()


def quiet_transformers() -> None:
    import warnings

    import transformers

    # torch.compile asks tensor subclasses (int4 weights) for a hash it uses only to cache compiled
    # graphs across processes; without one it compiles each process, which is what it does anyway
    warnings.filterwarnings("ignore", message=".*_stable_hash_for_caching")

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


class Rate:
    """Items per second since the first call, as progress-bar text ("" until it can be measured)."""

    def __init__(self, unit: str = "/s", digits: int = 2):
        self.unit, self.digits, self.start = unit, digits, None

    def __call__(self, done: int) -> str:
        import time

        now = time.perf_counter()
        if self.start is None:
            self.start = (now, done)
        t0, d0 = self.start
        return f"{(done - d0) / (now - t0):.{self.digits}f}{self.unit}" if now > t0 and done > d0 else ""


@contextmanager
def compress_progress():
    """A bar of planned frames compressed, with their rate; yields compress's `progress(done, total)`."""
    with progress_bar("compress") as bar:
        task = bar.add_task("frames", total=None, rate="")
        rate = Rate(" frames/s", digits=1)
        yield lambda done, total: bar.update(task, total=total, completed=done, rate=rate(done))


def progress_bar(label: str) -> Progress:
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err, transient=False,
                    disable=not err.is_terminal)


def threads_for(threads: int | None) -> int:
    """Apply --threads (or its default) to torch before any work; the count, for --json and run.json."""
    from vococli.threads import use_threads

    return use_threads(threads)
