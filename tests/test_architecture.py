"""The shape of the package that docs/architecture.md promises: small modules, no import cycles,
a CLI that imports no heavy library until a command runs, and registries that extend by one entry."""

import ast
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = ROOT / "vococli"


def modules() -> dict[str, ast.Module]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(p.read_text())
    return out


def module_level_imports(tree: ast.Module) -> set[str]:
    """vococli modules imported when `tree` is imported (not inside functions or TYPE_CHECKING)."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vococli"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vococli")}
    return found


def test_no_module_over_300_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 300}
    assert not long, long


def test_no_import_cycles():
    mods = modules()
    graph = {}
    for name, tree in mods.items():
        deps = set()
        for m in module_level_imports(tree):
            parts = m.split(".")
            deps |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # a.b.c imports a and a.b
        # a submodule importing its own package is the package's import in progress, not a cycle
        graph[name] = {d for d in deps if d in mods and d != name and not name.startswith(d + ".")}
    state, cycles = {}, []

    def visit(u, path):
        state[u] = "open"
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                cycles.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v, path + [v])
        state[u] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_a_cycle_is_detected():
    """The cycle check itself: two modules importing each other are found."""
    a, b = ast.parse("from vococli.b import x"), ast.parse("from vococli.a import y")
    assert "vococli.b" in module_level_imports(a) and "vococli.a" in module_level_imports(b)


def test_the_cli_imports_no_heavy_library_before_a_command_runs():
    code = ("import sys, vococli.cli.app; heavy = [m for m in ('torch', 'transformers', 'av', 'decord') "
            "if m in sys.modules]; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)


def test_registries_list_what_ships_and_refuse_unknown_names():
    from vococli.compressors import compressor_names, get_compressor
    from vococli.errors import UserError
    from vococli.families import family_names, get_family

    assert family_names() == ["llava_llama"] and compressor_names() == ["voco", "full", "avgpool", "qformer", "pool"]
    with pytest.raises(UserError, match="^model family 'qwen9': choose one of llava_llama$"):
        get_family("qwen9")
    with pytest.raises(UserError, match="^compressor 'grid': choose one of voco, full, avgpool, qformer, pool$"):
        get_compressor("grid")


def test_a_registered_compressor_is_used_by_training_masks():
    """A compressor added by one registry entry changes the mask the training forward uses."""
    import torch

    from vococli.compressors import COMPRESSORS, Compressor, register_compressor
    from vococli.families.base import VocoLayout
    from vococli.layout import voco_allowed

    class FirstSlotOnly(Compressor):  # text sees only the first of the K slots
        name = "first-slot"

        def text_visible(self, layout):
            visible = torch.zeros(layout.frame_len, dtype=torch.bool)
            visible[layout.c0] = True
            return visible

    lay = VocoLayout(bos_id=1, n_image=4, separator_ids=(5,), voco_id=9, k=2)
    register_compressor(FirstSlotOnly())
    try:
        allowed = voco_allowed(lay, 2, 3, "first-slot")
        n_vis = 2 * lay.frame_len
        assert allowed[n_vis:, :n_vis].sum() == 3 * 2  # 3 text rows x one slot of 2 frames
    finally:
        del COMPRESSORS["first-slot"]


def test_a_checkpoint_of_an_unknown_family_is_refused_in_one_line(tmp_path):
    from transformers import AutoConfig, LlamaConfig

    from vococli.errors import UserError
    from vococli.families import family_for_config

    LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="model type 'llama' is not a supported family"):
        family_for_config(AutoConfig.from_pretrained(tmp_path), tmp_path)
