"""Build the Cython kernels of convtune.

Environment switches (all optional):

- ``CONVTUNE_PORTABLE=1``  build the Cython kernels for a generic x86-64-v2 (or the
  compiler's default) instead of ``-march=native``, for wheels that must run on other
  machines. The micro-kernels (engine/kernels/ukernels/) are always built the same
  way, once per ISA with that ISA's flags (UKERNEL_OBJECTS), and chosen at run time
  from cpuid (engine.isa), so a portable build still runs AVX2 / AVX-512 kernels.
- ``CONVTUNE_MARCH=arch``  build the Cython kernels with ``-march=arch`` (e.g. x86-64-v3, an
  AVX2 machine's class): with ``CONVTUNE_ISA=avx2`` it reproduces an AVX2 machine's
  build on an AVX-512 one, for measurement.
- ``CONVTUNE_DEBUG=1``     turn Cython's bounds/wraparound checks back on and build with
  ``-O1 -g``: slow, for hunting out-of-bounds accesses.
- ``CONVTUNE_NO_OPENMP=1`` build without OpenMP even where the compiler has it.
- ``CONVTUNE_ONLY=name``   build only the named kernel modules (comma separated, e.g.
  ``pool,direct``); a developer convenience for ``build_ext --inplace``.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNELS = ["padding", "polyphase", "direct", "im2col", "igemm", "pool", "elementwise", "winograd",
           "_buildinfo", "_ukernels"]
# Kernel modules that run micro-kernels: the per-ISA objects are linked into them.
UKERNEL_USERS = {"winograd", "igemm", "_ukernels"}
UKERNEL_DIR = os.path.join("engine", "kernels", "ukernels")
# (source, ISA flags on top of the portable ones, macros): one object per ISA, so each
# function is compiled for exactly its instruction set and the baseline object runs on
# any CPU. The x86 ISAs are compiled only for x86 targets.
UKERNEL_OBJECTS = [
    ("dispatch.c", [], []),
    ("sgemm_scalar.c", [], []),
    ("winograd_generic.c", [], [("UK_SUFFIX", "scalar")]),
]
UKERNEL_X86_OBJECTS = [
    ("sgemm_avx2_fma.c", ["-mavx2", "-mfma"], []),
    ("winograd_avx2.c", ["-mavx2", "-mfma"], []),
    ("sgemm_avx512f.c", ["-mavx512f", "-mavx2", "-mfma"], []),
    ("winograd_avx512f.c", ["-mavx512f", "-mavx2", "-mfma"], []),
]


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _compiler():
    return os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0] or "cc"


def _compiles(flags, source="int main(void){return 0;}\n"):
    """True when the C compiler accepts ``flags`` on a tiny program (and links it)."""
    tmp = tempfile.mkdtemp(prefix="convtune-probe-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        cmd = [_compiler(), *flags, src, "-o", os.path.join(tmp, "probe")]
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


OPENMP_PROBE = """
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return omp_get_max_threads() > 0 && n > 0 ? 0 : 1;
}
"""


def _portable_arch():
    return ["-march=x86-64-v2"] if _compiles(["-march=x86-64-v2"]) else []


def _is_x86():
    return _compiles(["-mavx2"], "#if !defined(__x86_64__) && !defined(__i386__)\n#error\n#endif\n"
                     "int main(void){return 0;}\n")


def compile_flags():
    debug = _flag("CONVTUNE_DEBUG")
    cflags = ["-O1", "-g"] if debug else ["-O3"]
    march = os.environ.get("CONVTUNE_MARCH", "").strip()
    if march:
        if not _compiles([f"-march={march}"]):
            raise SystemExit(f"convtune: CONVTUNE_MARCH={march!r}: the compiler rejects -march={march}")
        cflags.append(f"-march={march}")
    elif not _flag("CONVTUNE_PORTABLE") and _compiles(["-march=native"]):
        cflags.append("-march=native")
    else:
        cflags += _portable_arch()
    # Let the compiler contract a*b+c into FMA and vectorise reductions over float;
    # we never rely on strict IEEE ordering inside a kernel (tests bound the error).
    cflags += ["-fno-math-errno", "-fno-trapping-math"]
    ldflags = []
    openmp = False
    if _flag("CONVTUNE_NO_OPENMP"):
        pass
    elif _compiles(["-fopenmp"], OPENMP_PROBE):
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
        openmp = True
    if not openmp:
        msg = ("convtune: OpenMP was not found (or CONVTUNE_NO_OPENMP is set): the kernels "
               "will be built SERIAL and use one core. Install a compiler with OpenMP "
               "(gcc, or clang with libomp) and rebuild for parallel kernels.")
        warnings.warn(msg)
        print("\n" + "*" * 78 + "\n" + msg + "\n" + "*" * 78 + "\n", file=sys.stderr)
    return cflags, ldflags, openmp, debug


def extensions():
    cflags, ldflags, _, debug = compile_flags()
    only = [s.strip() for s in os.environ.get("CONVTUNE_ONLY", "").split(",") if s.strip()]
    names = [k for k in KERNELS if not only or k in only]
    # The build info module reports exactly what was used to build.
    flags_macro = '"' + " ".join(cflags).replace('"', "") + '"'
    exts = []
    ukernel_files = [os.path.join(UKERNEL_DIR, f) for f in sorted(os.listdir(UKERNEL_DIR))]
    for name in names:
        path = os.path.join("engine", "kernels", name + ".pyx")
        if not os.path.exists(path):
            continue
        exts.append(Extension(
            "engine.kernels." + name,
            [path],
            include_dirs=[os.path.join("engine", "kernels")],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
            define_macros=[("CONVTUNE_CFLAGS", flags_macro)],
            depends=ukernel_files if name in UKERNEL_USERS else [],
        ))
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": debug,
        "initializedcheck": debug,
        "cdivision": True,
        "nonecheck": False,
        "embedsignature": True,
    }
    return cythonize(exts, compiler_directives=directives, quiet=True)


class BuildExtWithUkernels(build_ext):
    """build_ext that first compiles the micro-kernel objects, each source with its
    own ISA flags (UKERNEL_OBJECTS), and links them into the modules that use them."""

    def build_extensions(self):
        debug = _flag("CONVTUNE_DEBUG")
        base = (["-O1", "-g"] if debug else ["-O3"]) + _portable_arch() + [
            "-fno-math-errno", "-fno-trapping-math", "-fvisibility=hidden"]
        table = UKERNEL_OBJECTS + (UKERNEL_X86_OBJECTS if _is_x86() else [])
        objects = []
        for source, isa_flags, macros in table:
            tag = "_".join([source[:-2]] + [v for _, v in macros])
            out_dir = os.path.join(self.build_temp, "ukernels", tag)
            objects += self.compiler.compile([os.path.join(UKERNEL_DIR, source)],
                                             output_dir=out_dir, macros=macros,
                                             include_dirs=[UKERNEL_DIR],
                                             extra_postargs=base + isa_flags)
        for ext in self.extensions:
            if ext.name.rsplit(".", 1)[-1] in UKERNEL_USERS:
                ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extensions()


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtWithUkernels})
