"""Build a family's ``kernels.cu`` for the CPU CUDA emulator (``include/emu.h``) and call it.

``load(family)`` rewrites the two constructs C++ cannot parse (``kernel<<<grid, block, smem,
stream>>>(args)`` launches and ``extern __shared__`` arrays) and has static ``__shared__`` arrays
poisoned per block, compiles the result with g++ (instrumented by the thread and undefined-behaviour
sanitizers, whose hooks ``runtime.cpp`` implements as the race and UB checks) together with
``drivers/<family>.cpp`` (``extern "C"`` entry points over the launchers of ``kernels.cuh``) into a
shared library, and returns it through ctypes. Builds are cached per source hash.
``check(lib)`` raises with the emulator's report, kernel source lines included.

``guarded(shape, dtype, fill)`` returns a numpy array whose last byte sits right before an
inaccessible page, so a kernel that reads or writes past the end crashes instead of passing.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"

_LAUNCH = re.compile(r"(?P<name>[A-Za-z_][\w:]*(?:<[^<>;(){}]*>)?)\s*<<<(?P<cfg>.*?)>>>\s*\((?P<empty>\s*\))?", re.S)
_SHARED = re.compile(r"__shared__\s+(?P<decl>(?:__align__\(\d+\)\s+)?[^;()]*?\b(?P<name>\w+)\s*(?:\[[^\]]*\]\s*)+);")
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?(?P<type>\w+)\s+(?P<name>\w+)\s*\[\s*\]\s*;")


def emulated_source(cu: str) -> str:
    """``cu`` with launches turned into ``::emu::launch(cfg)(kernel, args)`` calls, dynamic shared
    arrays into pointers to the emulated block's buffer, and static shared arrays poisoned (0xff)
    by the first thread of every block that reaches them, as a GPU leaves them undefined."""
    def launch(m):
        head = f"::emu::launch({m['cfg']})({m['name']}"
        return head + ")" if m["empty"] else head + ", "

    out = _LAUNCH.sub(launch, cu)
    out = _EXTERN_SHARED.sub(lambda m: f"{m['type']}* {m['name']} = static_cast<{m['type']}*>(::emu::dynamic_shared());",
                             out)
    out = _SHARED.sub(lambda m: f"__shared__ {m['decl']}; ::emu::poison_shared({m['name']}, sizeof({m['name']}));", out)
    code = "\n".join(line.split("//")[0] for line in out.splitlines())  # comments may name them
    if "<<<" in code or "extern __shared__" in code or re.search(r"__shared__(?![^;\n]*; ::emu::poison_shared)", code):
        raise RuntimeError("cuda_emu: a launch or __shared__ array was not rewritten")
    return out


def _run(cmd: list, family: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"cuda_emu: building {family} failed:\n{' '.join(cmd)}\n{res.stderr[-6000:]}")


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def available() -> bool:
    """g++ is there and the CPU is x86-64 (runtime.cpp's stack switch is x86-64 assembly)."""
    return _compiler() is not None and platform.machine() in ("x86_64", "AMD64")


_LOADED: dict[str, ctypes.CDLL] = {}


def load(family: str, source: Path | None = None) -> ctypes.CDLL:
    """The emulated kernels of ``csrc/<family>/kernels.cu`` (or ``source``) plus
    ``drivers/<family>.cpp``, as a ctypes library."""
    if family in _LOADED:
        return _LOADED[family]
    source = source or CSRC / family / "kernels.cu"
    cu = source.read_text()
    driver = HERE / "drivers" / f"{family}.cpp"
    headers = sorted((HERE / "include").glob("*.h")) + sorted((HERE / "drivers").glob("*.h")) + sorted(CSRC.glob("*/*.h")) + sorted(CSRC.glob("*/*.cuh"))
    digest = hashlib.sha256()
    runtime = HERE / "runtime.cpp"
    for text in [cu, driver.read_text(), runtime.read_text(), Path(__file__).read_text()] + [h.read_text() for h in headers]:
        digest.update(text.encode())
    build = Path(os.environ.get("WEIGHTKIT_EMU_BUILD", Path(tempfile.gettempdir()) / "weightkit-cuda-emu"))
    build.mkdir(parents=True, exist_ok=True)
    lib = build / f"{family}-{digest.hexdigest()[:16]}.so"
    if not lib.exists():
        # The kernel source and rewritten copies of every .cuh (cuda_utils.cuh declares shared
        # arrays too) in a scratch folder, found first by the source's quoted includes.
        work = Path(tempfile.mkdtemp(prefix=f"{family}-", dir=build))
        for cuh in CSRC.glob("*/*.cuh"):
            (work / cuh.parent.name).mkdir(exist_ok=True)
            (work / cuh.parent.name / cuh.name).write_text(f'#line 1 "{cuh}"\n' + emulated_source(cuh.read_text()))
        src = work / "kernels_emu.cpp"
        src.write_text(f'#line 1 "{source}"\n' + emulated_source(cu))
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        # Sanitizer checks are compiled in, but the handlers are runtime.cpp's (no libubsan or
        # libtsan; the thread sanitizer's hooks become the race detector): compile each file,
        # then link without -fsanitize.
        flags = ["-std=c++20", "-O1", "-g", "-fPIC", "-pthread", "-w", f"-I{HERE / 'include'}", f"-I{work}", f"-I{CSRC}"]
        checked = ["-fsanitize=thread,alignment,bounds,shift,integer-divide-by-zero", "-fsanitize-recover=all"]
        objs = []
        for i, (path, extra) in enumerate([(src, checked), (driver, []), (runtime, [])]):
            obj = work / f"{i}.o"
            _run([_compiler(), *flags, *extra, "-c", str(path), "-o", str(obj)], family)
            objs.append(str(obj))
        _run([_compiler(), "-shared", "-pthread", "-Wl,-Bsymbolic", *objs, "-o", str(tmp)], family)
        shutil.rmtree(work, ignore_errors=True)
        tmp.replace(lib)
    handle = ctypes.CDLL(str(lib))
    handle.emu_failure.restype = ctypes.c_char_p
    handle.emu_source = str(source)
    _LOADED[family] = handle
    return handle


def _source_lines(lib: ctypes.CDLL, msg: str) -> str:
    """``msg`` with each "pc 0x..." (an offset in the library) followed by its kernel source line."""
    tool = shutil.which("addr2line")
    if tool is None:
        return msg

    def resolve(m):
        res = subprocess.run([tool, "-e", lib._name, "-i", m[1]], capture_output=True, text=True)
        lines = [ln.split(" (discriminator")[0] for ln in res.stdout.splitlines() if not ln.startswith("??")]
        kernel = [ln for ln in lines if "/cuda_emu/include/" not in ln and "/cuda_emu/runtime" not in ln]
        # GCC's line table names the rewritten copy (same line numbers): name the original.
        return f"{m[0]} ({re.sub(r'^.*/kernels_emu[.]cpp', lib.emu_source, (kernel or lines or ['?'])[0])})"

    return re.sub(r"pc (0x[0-9a-f]+)", resolve, msg)


def check(lib: ctypes.CDLL) -> None:
    """Raise with the emulator's report if the last calls failed (then reset it)."""
    msg = lib.emu_failure().decode()
    lib.emu_reset()
    if msg:
        raise AssertionError(f"emulated CUDA failure: {_source_lines(lib, msg)}")


_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
# Every mapping stays alive for the session: tests pass ptr(device_copy(t)), a pointer into an
# array that is garbage before the kernel runs.
_KEEP: list = []


def guarded(shape, dtype, fill=None) -> np.ndarray:
    """A C-contiguous array (16-byte aligned) ending just before a PROT_NONE page. ``fill``:
    initial value (``None`` leaves zeros; use NaN / 0xff patterns for outputs)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = -(-max(nbytes, 1) // _PAGE) * _PAGE + _PAGE
    mm = mmap.mmap(-1, body + _PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    if _libc.mprotect(ctypes.c_void_p(base + body), _PAGE, 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")
    offset = (body - nbytes) // 16 * 16
    arr = np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=offset).view(dtype).reshape(shape)
    if fill is not None:
        arr[...] = fill
    _KEEP.append(mm)
    return arr


def ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


_BITS = {torch.bfloat16: np.uint16, torch.float16: np.uint16}
#: weightkit::DType codes (csrc/common/dtype.h).
DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def device_copy(t: torch.Tensor) -> np.ndarray:
    """A guarded copy of ``t`` (16-bit floats as their bit patterns): the emulated device memory."""
    t = t.detach().contiguous()
    if t.dtype in _BITS:
        src = t.view(torch.int16).numpy().view(np.uint16)
    else:
        src = t.numpy()
    arr = guarded(tuple(t.shape), src.dtype)
    arr[...] = src
    return arr


def device_empty(shape, dtype: torch.dtype) -> np.ndarray:
    """A guarded output buffer filled with NaN (floats) or all-ones bits, so unwritten elements show."""
    if dtype in _BITS:
        return guarded(tuple(shape), np.uint16, 0xFFFF)
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    return guarded(tuple(shape), np_dtype, np.nan if np_dtype.kind == "f" else -1)


def host(arr: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """``arr`` back as a torch tensor of ``dtype``."""
    t = torch.from_numpy(arr.copy())
    return t.view(torch.int16).view(dtype) if dtype in _BITS else t
