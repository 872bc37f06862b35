"""Raw ctypes bindings to the system's libbpf (libbpf.so.1).

This module only declares C prototypes and the option structs they take; the
object model lives in the sibling modules.  Set ``CHAINBENCH_LIBBPF`` to the
path of another libbpf build to use it instead of the system one.

Facts this layer relies on (libbpf >= 1.0):
- low-level ``bpf_*`` calls return a negative errno on failure;
- pointer-returning calls return NULL and set ``errno`` (hence use_errno=True);
- every ``*_opts`` struct needs its ``sz`` field set; fields past ``sz`` read
  as zero, so a struct may stop after the last field we use.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from ctypes import (CFUNCTYPE, POINTER, Structure, c_bool, c_char_p, c_int, c_int64,
                    c_size_t, c_uint32, c_uint64, c_void_p)

from harness.host.signals import deferred

_LIB_ENV = "CHAINBENCH_LIBBPF"


def _open_library() -> ctypes.CDLL:
    path = os.environ.get(_LIB_ENV) or ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        return ctypes.CDLL(path, use_errno=True)
    except OSError as exc:
        raise ImportError(f"cannot load libbpf from {path!r} (set {_LIB_ENV}): {exc}") from exc


lib = _open_library()
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _fn(name: str, restype, *argtypes):
    func = getattr(lib, name)
    func.restype = restype
    func.argtypes = list(argtypes)
    return func


# --- option structs (prefixes of the C structs; see module docstring) ---------

class ObjectOpenOpts(Structure):
    _fields_ = [("sz", c_size_t), ("object_name", c_char_p), ("relaxed_maps", c_bool),
                ("pin_root_path", c_char_p)]


class TestRunOpts(Structure):
    _fields_ = [("sz", c_size_t), ("data_in", c_void_p), ("data_out", c_void_p),
                ("data_size_in", c_uint32), ("data_size_out", c_uint32),
                ("ctx_in", c_void_p), ("ctx_out", c_void_p),
                ("ctx_size_in", c_uint32), ("ctx_size_out", c_uint32),
                ("retval", c_uint32), ("repeat", c_int), ("duration", c_uint32),
                ("flags", c_uint32), ("cpu", c_uint32), ("batch_size", c_uint32)]


class MapBatchOpts(Structure):
    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class TcHook(Structure):
    _fields_ = [("sz", c_size_t), ("ifindex", c_int), ("attach_point", c_int),
                ("parent", c_uint32)]


class TcOpts(Structure):
    _fields_ = [("sz", c_size_t), ("prog_fd", c_int), ("flags", c_uint32),
                ("prog_id", c_uint32), ("handle", c_uint32), ("priority", c_uint32)]


class MapCreateOpts(Structure):
    _fields_ = [("sz", c_size_t), ("btf_fd", c_uint32), ("btf_key_type_id", c_uint32),
                ("btf_value_type_id", c_uint32), ("btf_vmlinux_value_type_id", c_uint32),
                ("inner_map_fd", c_uint32), ("map_flags", c_uint32), ("map_extra", c_uint64),
                ("numa_node", c_uint32), ("map_ifindex", c_uint32)]


def opts(struct_type, **fields):
    """Build an opts struct with ``sz`` set, as libbpf requires."""
    value = struct_type(**fields)
    value.sz = ctypes.sizeof(struct_type)
    return value


# --- objects, programs, maps ---------------------------------------------------
bpf_object__open_file = _fn("bpf_object__open_file", c_void_p, c_char_p, POINTER(ObjectOpenOpts))
bpf_object__load = _fn("bpf_object__load", c_int, c_void_p)
bpf_object__close = _fn("bpf_object__close", None, c_void_p)
bpf_object__name = _fn("bpf_object__name", c_char_p, c_void_p)
bpf_object__btf = _fn("bpf_object__btf", c_void_p, c_void_p)
bpf_object__next_program = _fn("bpf_object__next_program", c_void_p, c_void_p, c_void_p)
bpf_object__next_map = _fn("bpf_object__next_map", c_void_p, c_void_p, c_void_p)

bpf_program__name = _fn("bpf_program__name", c_char_p, c_void_p)
bpf_program__section_name = _fn("bpf_program__section_name", c_char_p, c_void_p)
bpf_program__fd = _fn("bpf_program__fd", c_int, c_void_p)
bpf_program__type = _fn("bpf_program__type", c_int, c_void_p)
bpf_program__set_autoload = _fn("bpf_program__set_autoload", c_int, c_void_p, c_bool)
bpf_program__pin = _fn("bpf_program__pin", c_int, c_void_p, c_char_p)
bpf_program__unpin = _fn("bpf_program__unpin", c_int, c_void_p, c_char_p)
bpf_program__attach_cgroup = _fn("bpf_program__attach_cgroup", c_void_p, c_void_p, c_int)

bpf_map__name = _fn("bpf_map__name", c_char_p, c_void_p)
bpf_map__fd = _fn("bpf_map__fd", c_int, c_void_p)
bpf_map__type = _fn("bpf_map__type", c_int, c_void_p)
bpf_map__key_size = _fn("bpf_map__key_size", c_uint32, c_void_p)
bpf_map__value_size = _fn("bpf_map__value_size", c_uint32, c_void_p)
bpf_map__max_entries = _fn("bpf_map__max_entries", c_uint32, c_void_p)
bpf_map__set_max_entries = _fn("bpf_map__set_max_entries", c_int, c_void_p, c_uint32)
bpf_map__map_flags = _fn("bpf_map__map_flags", c_uint32, c_void_p)
bpf_map__set_map_flags = _fn("bpf_map__set_map_flags", c_int, c_void_p, c_uint32)
bpf_map__btf_key_type_id = _fn("bpf_map__btf_key_type_id", c_uint32, c_void_p)
bpf_map__btf_value_type_id = _fn("bpf_map__btf_value_type_id", c_uint32, c_void_p)
bpf_map__initial_value = _fn("bpf_map__initial_value", c_void_p, c_void_p, POINTER(c_size_t))
bpf_map__is_internal = _fn("bpf_map__is_internal", c_bool, c_void_p)
bpf_map__set_pin_path = _fn("bpf_map__set_pin_path", c_int, c_void_p, c_char_p)
bpf_map__pin = _fn("bpf_map__pin", c_int, c_void_p, c_char_p)
bpf_map__unpin = _fn("bpf_map__unpin", c_int, c_void_p, c_char_p)
bpf_map__reuse_fd = _fn("bpf_map__reuse_fd", c_int, c_void_p, c_int)

bpf_link__destroy = _fn("bpf_link__destroy", c_int, c_void_p)
bpf_link__pin = _fn("bpf_link__pin", c_int, c_void_p, c_char_p)
bpf_link__fd = _fn("bpf_link__fd", c_int, c_void_p)

libbpf_num_possible_cpus = _fn("libbpf_num_possible_cpus", c_int)

# --- low-level syscall wrappers --------------------------------------------
bpf_map_lookup_elem = _fn("bpf_map_lookup_elem", c_int, c_int, c_void_p, c_void_p)
bpf_map_update_elem = _fn("bpf_map_update_elem", c_int, c_int, c_void_p, c_void_p, c_uint64)
bpf_map_delete_elem = _fn("bpf_map_delete_elem", c_int, c_int, c_void_p)
bpf_map_get_next_key = _fn("bpf_map_get_next_key", c_int, c_int, c_void_p, c_void_p)
bpf_map_update_batch = _fn("bpf_map_update_batch", c_int, c_int, c_void_p, c_void_p,
                           POINTER(c_uint32), POINTER(MapBatchOpts))
bpf_map_delete_batch = _fn("bpf_map_delete_batch", c_int, c_int, c_void_p,
                           POINTER(c_uint32), POINTER(MapBatchOpts))
bpf_map_lookup_batch = _fn("bpf_map_lookup_batch", c_int, c_int, c_void_p, c_void_p,
                           c_void_p, c_void_p, POINTER(c_uint32), POINTER(MapBatchOpts))
bpf_map_create = _fn("bpf_map_create", c_int, c_int, c_char_p, c_uint32, c_uint32, c_uint32,
                     POINTER(MapCreateOpts))
bpf_obj_get = _fn("bpf_obj_get", c_int, c_char_p)
bpf_obj_pin = _fn("bpf_obj_pin", c_int, c_int, c_char_p)
bpf_obj_get_info_by_fd = _fn("bpf_obj_get_info_by_fd", c_int, c_int, c_void_p, POINTER(c_uint32))
bpf_prog_get_next_id = _fn("bpf_prog_get_next_id", c_int, c_uint32, POINTER(c_uint32))
bpf_prog_get_fd_by_id = _fn("bpf_prog_get_fd_by_id", c_int, c_uint32)
bpf_prog_test_run_opts = _fn("bpf_prog_test_run_opts", c_int, c_int, POINTER(TestRunOpts))

# --- attach points -------------------------------------------------------------
bpf_tc_hook_create = _fn("bpf_tc_hook_create", c_int, POINTER(TcHook))
bpf_tc_hook_destroy = _fn("bpf_tc_hook_destroy", c_int, POINTER(TcHook))
bpf_tc_attach = _fn("bpf_tc_attach", c_int, POINTER(TcHook), POINTER(TcOpts))
bpf_tc_detach = _fn("bpf_tc_detach", c_int, POINTER(TcHook), POINTER(TcOpts))
bpf_tc_query = _fn("bpf_tc_query", c_int, POINTER(TcHook), POINTER(TcOpts))
bpf_xdp_attach = _fn("bpf_xdp_attach", c_int, c_int, c_int, c_uint32, c_void_p)
bpf_xdp_detach = _fn("bpf_xdp_detach", c_int, c_int, c_uint32, c_void_p)
bpf_xdp_query_id = _fn("bpf_xdp_query_id", c_int, c_int, c_int, POINTER(c_uint32))

# --- ring buffer -----------------------------------------------------------------
RingBufferSampleFn = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
ring_buffer__new = _fn("ring_buffer__new", c_void_p, c_int, RingBufferSampleFn, c_void_p, c_void_p)
ring_buffer__poll = _fn("ring_buffer__poll", c_int, c_void_p, c_int)
ring_buffer__consume = _fn("ring_buffer__consume", c_int, c_void_p)
ring_buffer__free = _fn("ring_buffer__free", None, c_void_p)

# --- BTF -------------------------------------------------------------------------
btf__find_by_name_kind = _fn("btf__find_by_name_kind", c_int, c_void_p, c_char_p, c_uint32)
btf__type_cnt = _fn("btf__type_cnt", c_uint32, c_void_p)
btf__type_by_id = _fn("btf__type_by_id", c_void_p, c_void_p, c_uint32)
btf__resolve_size = _fn("btf__resolve_size", c_int64, c_void_p, c_uint32)
btf__resolve_type = _fn("btf__resolve_type", c_int, c_void_p, c_uint32)
btf__name_by_offset = _fn("btf__name_by_offset", c_char_p, c_void_p, c_uint32)

# --- the print callback: libbpf's diagnostics, verifier logs included -----------
# libbpf_print_fn_t is int (*)(enum libbpf_print_level, const char *, va_list).
# On x86-64 a va_list argument decays to a pointer, so it can be handed on to
# vsnprintf unchanged.
PrintFn = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
_vsnprintf = libc.vsnprintf
_vsnprintf.restype = c_int
_vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
_set_print = _fn("libbpf_set_print", c_void_p, PrintFn)

LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2

_capture = threading.local()
# libbpf hands a whole verifier log to one print call; size for the largest
# (the kernel caps a log at 16 MiB less one byte).
_PRINT_BUF = ctypes.create_string_buffer(16 << 20)
_print_lock = threading.Lock()
_log_lines: list[str] = []   # most recent messages when nobody captures (bounded)


def _print_cb(level: int, fmt: bytes, va_list: int) -> int:
    # An exception escaping a ctypes callback is printed and swallowed, so this
    # function must not raise.
    try:
        if level > LIBBPF_INFO and not getattr(_capture, "debug", False):
            return 0
        with _print_lock:
            _vsnprintf(_PRINT_BUF, len(_PRINT_BUF), fmt, va_list)
            text = _PRINT_BUF.value.decode(errors="replace")
        sink = getattr(_capture, "sink", None)
        if sink is not None:
            sink.append(text)
        else:
            _log_lines.append(text)
            del _log_lines[:-200]
    except BaseException:  # noqa: BLE001 - see comment above
        pass
    return 0


_print_fn = PrintFn(_print_cb)   # kept referenced for the process lifetime
_set_print(_print_fn)


class captured_log:
    """Context manager collecting libbpf's messages (verifier log included) for
    the calls made inside it on this thread; ``.text`` holds them afterwards.

    SIGINT, SIGTERM and SIGHUP are held for the block and delivered after it
    (harness.host.signals.deferred): libbpf calls ``_print_cb`` from inside these
    calls (opening and loading an object: hundreds of ms), and an exception a
    signal handler raises in a ctypes callback is printed and dropped, so Ctrl-C
    would be lost and the command would go on."""

    def __init__(self, debug: bool = False):
        self.lines: list[str] = []
        self.debug = debug

    def __enter__(self) -> "captured_log":
        self._held = deferred()
        self._held.__enter__()
        self._saved = (getattr(_capture, "sink", None), getattr(_capture, "debug", False))
        _capture.sink, _capture.debug = self.lines, self.debug
        return self

    def __exit__(self, *exc) -> None:
        _capture.sink, _capture.debug = self._saved
        self._held.__exit__(*exc)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def errno_now() -> int:
    return ctypes.get_errno()
