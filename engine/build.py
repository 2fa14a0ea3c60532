"""What this installation was built with, and what it runs on."""
import os
import platform

from . import isa
from .kernels import _buildinfo
from .threads import blas_info, get_num_threads


def build_info():
    """OpenMP, compiler and flags, instruction-set extensions built for, the micro-kernels
    that run (ISA chosen from cpuid, CONVTUNE_ISA's cap, kernel names), BLAS in use.

    The compile-time facts come from the compiled module itself (its predefined
    macros), so they describe the binary actually loaded, not the build machine's
    current state."""
    info = dict(_buildinfo.info())
    info["threads"] = get_num_threads()
    info["ukernels"] = {"cpu": isa.cpu(), "active": isa.active(),
                        "cap": os.environ.get("CONVTUNE_ISA") or None,
                        "available": isa.available(), **isa.kernels()}
    info["machine"] = platform.machine()
    info["blas"] = [
        {k: b.get(k) for k in ("internal_api", "version", "threading_layer", "architecture",
                               "num_threads", "filepath")}
        for b in blas_info()
    ]
    return info


def _ukernel_line(u):
    cap = f", capped by CONVTUNE_ISA={u['cap']}" if u["cap"] else ""
    return (f"{u['active']} (CPU supports {', '.join(u['available'])}{cap}): "
            f"{u['sgemm']}, {u['winograd']}")


def format_build_info(info=None):
    info = build_info() if info is None else info
    lines = [
        f"OpenMP:    {'yes (' + str(info['openmp_version']) + ')' if info['openmp'] else 'NO (serial build)'}",
        f"compiler:  {info['compiler']}",
        f"flags:     {info['cflags']}",
        f"ISA:       {', '.join(info['isa']) or 'baseline'} (compiled for)",
        f"ukernels:  {_ukernel_line(info['ukernels'])}",
        f"threads:   {info['threads']}",
    ]
    for b in info["blas"]:
        lines.append(f"BLAS:      {b['internal_api']} {b['version']} ({b['threading_layer']}, "
                     f"{b['architecture']}) {b['filepath']}")
    return "\n".join(lines)
