"""4-bit weights for the answering language model.

Two kinds, chosen with `--weights`:
- `nf4`: bitsandbytes' NormalFloat4 (one absmax scale per 64 weights). Its GEMV reads the
  weights at a fraction of the memory bandwidth on a GPU.
- `int4`: torchao's weight-only int4 (one scale and one zero point, in the model's dtype, per group
  of 128 weights, asymmetric: w = min + q * (max - min) / 15), computed by the tinygemm kernels that ship in
  torch (`_weight_int4pack_mm` on CUDA, `_weight_int4pack_mm_for_cpu` on a CPU).

Only the decoder layers' Linear weights are quantised; the embeddings, the final norm and the head
stay in the model's dtype. Both work on a copy of the module tree whose tensors are shared until
replaced, so the full-precision model handed in is left as it was.
"""

from __future__ import annotations

import warnings

import torch

from vococli.choices import Weights, check, options
from vococli.errors import UserError
from vococli.quiet import quiet_library_imports

WEIGHTS = options(Weights)
INT4_GROUP_SIZES = (128, 64, 32)  # the first that divides a layer's input size is used
def check_weights(weights: str) -> str:
    return check(weights, Weights, "weights")


def quantize_decoder(lm: torch.nn.Module, weights: str, dtype: torch.dtype,
                     device: torch.device | None = None) -> torch.nn.Module:
    """`lm` (a LlamaForCausalLM) with its decoder Linear weights in `weights` ("full" returns it).
    For int4, `device` is where the quantised weights go (default: where `lm` is): a model loaded
    on the CPU is then quantised one Linear at a time onto the GPU, never whole in full precision."""
    check_weights(weights)
    if weights == "nf4":
        return quantize_decoder_nf4(lm, dtype)
    if weights == "int4":
        return quantize_decoder_int4(lm, dtype, device)
    return lm


def weights_of(lm: torch.nn.Module) -> str:
    """Which of WEIGHTS a (possibly quantised) language model's decoder holds."""
    for module in lm.modules():
        if type(module).__name__ == "Linear4bit":
            return "nf4"
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear) and type(weight).__name__.startswith("Int4"):
            return "int4"
    return "full"


# ---------------------------------------------------------------- nf4 (bitsandbytes)


def quantize_decoder_nf4(lm: torch.nn.Module, compute_dtype: torch.dtype) -> torch.nn.Module:
    try:
        import bitsandbytes as bnb
    except Exception as e:  # ImportError, or a broken native library
        raise UserError(f"--weights nf4 needs bitsandbytes, which cannot be loaded here: {e}") from None

    def nf4(name: str, child: torch.nn.Linear) -> torch.nn.Module:
        ql = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                               compute_dtype=compute_dtype, compress_statistics=False, quant_type="nf4",
                               device="meta")
        ql.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=False,
                                      quant_type="nf4").to(child.weight.device)
        if child.bias is not None:
            ql.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
        return ql

    return _replace_linears(lm, nf4)


# ---------------------------------------------------------------- int4 (torchao)


def int4_group_size(in_features: int) -> int | None:
    return next((g for g in INT4_GROUP_SIZES if in_features % g == 0), None)


def check_int4_target(device: torch.device, dtype: torch.dtype) -> None:
    """Refuse, before anything is loaded, what the int4 kernels cannot run."""
    if device.type == "cuda":
        if dtype != torch.bfloat16:
            raise UserError(f"--weights int4 on a GPU needs --dtype bfloat16 (its kernel computes in bfloat16), "
                            f"not {str(dtype)[6:]}")
        if torch.cuda.get_device_capability(device)[0] < 8:
            raise UserError("--weights int4 needs a GPU of compute capability 8.0 or newer; use --weights nf4")
    elif device.type != "cpu":
        raise UserError(f"--weights int4 runs on CUDA GPUs and CPUs, not on {device.type}")


def quantize_decoder_int4(lm: torch.nn.Module, dtype: torch.dtype,
                          device: torch.device | None = None) -> torch.nn.Module:
    device = torch.device(device) if device is not None else next(lm.parameters()).device
    check_int4_target(device, dtype)
    quantize_, config_for = _torchao(device)

    def int4(name: str, child: torch.nn.Linear) -> torch.nn.Module:
        group = int4_group_size(child.in_features)
        if group is None:
            raise UserError(f"--weights int4: layer {name} has {child.in_features} inputs, which no "
                            f"group size of {INT4_GROUP_SIZES} divides; use --weights full")
        new = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                              device="meta", dtype=dtype)
        new.weight = torch.nn.Parameter(child.weight.data, requires_grad=False)
        if child.bias is not None:
            new.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
        wrapper = torch.nn.Sequential(new)  # quantize_ replaces the weights of a root's children
        quantize_(wrapper, config_for(group), device=device)  # moves this Linear only, then quantises
        return wrapper[0]

    return _replace_linears(lm, int4)


def _torchao(device: torch.device):
    """torchao's `quantize_` and a config maker for `device`, imported without its start-up chatter.
    Only the config for the device in use is imported (the CPU one lives in torchao's prototype)."""
    quiet_library_imports()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import quantize_

            if device.type == "cuda":
                from torchao.quantization import Int4WeightOnlyConfig

                def config_for(group):
                    return Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d",
                                                set_inductor_config=False)
            else:
                from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

                def config_for(group):
                    return PrototypeInt4WeightOnlyConfig(group_size=group, set_inductor_config=False)
    except Exception as e:
        raise UserError(f"--weights int4 needs torchao, which cannot be loaded here: {e}") from None
    return quantize_, config_for


# ---------------------------------------------------------------- module-tree copies


def _replace_linears(lm: torch.nn.Module, make) -> torch.nn.Module:
    """A copy of `lm` whose decoder layers' Linears are `make(name, linear)`; `lm` is untouched."""
    q = _module_copy(lm)
    q.model = _module_copy(lm.model)
    q.model.layers = torch.nn.ModuleList([_tree_copy(layer) for layer in lm.model.layers])
    for layer in q.model.layers:
        for name, child in _linears(layer):
            parent, attr = _parent(layer, name)
            setattr(parent, attr, make(name, child))
    return q


def _module_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A shallow copy whose tables (children, parameters, buffers, hooks) are its own: tensors stay
    shared, but a hook registered on one module later does not run in the other."""
    import copy

    new = copy.copy(module)
    for key, value in vars(module).items():
        if isinstance(value, (dict, set)):
            new.__dict__[key] = copy.copy(value)
    return new


def _tree_copy(module: torch.nn.Module) -> torch.nn.Module:
    """`_module_copy` applied to every submodule: the structure can be changed, the tensors are shared."""
    new = _module_copy(module)
    new._modules = {k: _tree_copy(v) for k, v in module._modules.items()}
    return new


def _linears(module: torch.nn.Module):
    return [(n, m) for n, m in module.named_modules() if type(m) is torch.nn.Linear]


def _parent(root: torch.nn.Module, name: str):
    *path, attr = name.split(".")
    mod = root
    for p in path:
        mod = getattr(mod, p)
    return mod, attr
