"""The kernel matrix (ci/kernel_matrix/): the pure parts of the driver and of
the guest side -- kernel list, kernel configs, module ordering, initramfs,
guest output, result document, markdown.

Booting kernels under qemu is a release check, not a unit test: the real
run is opt-in with CHAINBENCH_KERNEL_MATRIX=1 (CHAINBENCH_KERNEL_MATRIX_KERNEL
picks the kernel, default bookworm-6.1; it downloads ~70 MB once and takes
minutes under TCG)."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ci.kernel_matrix import cli, guest, qemu
from ci.kernel_matrix.console import console_failure, parse_console
from ci.kernel_matrix.debs import find_kernel_files, normalize_module_layout
from ci.kernel_matrix.errors import KernelError, MatrixError
from ci.kernel_matrix.host import check_visible_in_guest, is_static_elf, lock_work_dir
from ci.kernel_matrix.initramfs import S_IFCHR, S_IFREG, build_initramfs, init_conf
from ci.kernel_matrix.kconfig import check_kconfig, parse_kconfig
from ci.kernel_matrix.kernels import Deb, load_kernels, parse_kernels, select_kernels
from ci.kernel_matrix.modules import (boot_module_order, module_name, parse_modules_builtin,
                                      parse_modules_dep, read_module)
from ci.kernel_matrix.paths import DEFAULT_KERNELS
from ci.kernel_matrix.qemu import choose_accel, qemu_command
from ci.kernel_matrix.report import (assemble, kernel_entry, markdown, merge_entries, one_line,
                                     summarize_guest)

ROOT = Path(__file__).resolve().parent.parent
KM_DIR = ROOT / "ci" / "kernel_matrix"

SHA = "a" * 64
MINIMAL = f"""
[[kernel]]
name = "k1"
package = "linux-image-6.1.0-1-amd64"
version = "6.1.1-1"
debs = [{{ url = "https://deb.debian.org/debian/pool/main/l/x/linux-image-6.1.0-1-amd64_6.1.1-1_amd64.deb", sha256 = "{SHA}" }}]
"""


# ---- kernel list -----------------------------------------------------------

def test_shipped_kernel_list_parses_and_is_pinned():
    config = load_kernels(DEFAULT_KERNELS)
    assert len(config.kernels) >= 2
    names = [k.name for k in config.kernels]
    assert len(set(names)) == len(names)
    for k in config.kernels:
        assert k.kernel and k.version and k.package.startswith("linux-image-")
        for deb in k.debs:
            assert deb.url.startswith("https://deb.debian.org/")
            assert len(deb.sha256) == 64 and deb.size
            assert deb.filename.endswith("_amd64.deb")
            assert "cloud-amd64" not in deb.filename    # cloud kernels have no 9p
    for t in config.tests:
        assert (ROOT / t).is_file(), t
    assert config.pytest_args


def test_minimal_entry_and_defaults():
    config = parse_kernels(MINIMAL)
    (k,) = config.kernels
    assert (k.name, k.package, k.version, k.suite, k.kernel) == \
        ("k1", "linux-image-6.1.0-1-amd64", "6.1.1-1", "", "")
    assert k.debs[0].filename == "linux-image-6.1.0-1-amd64_6.1.1-1_amd64.deb"
    assert config.tests == [] and config.pytest_args == ["-q", "-x"]


def test_url_filename_is_unquoted():
    deb = Deb("https://x/pool/linux-image-6.12.95%2Bdeb12-amd64_6.12.95-1~bpo12%2B1_amd64.deb", SHA)
    assert deb.filename == "linux-image-6.12.95+deb12-amd64_6.12.95-1~bpo12+1_amd64.deb"


@pytest.mark.parametrize("mutation, message", [
    (lambda t: t.replace(f'sha256 = "{SHA}"', 'sha256 = "abc"'), "sha256 must be 64"),
    (lambda t: t.replace("https://deb.debian.org", "ftp://deb.debian.org"), "url must be an http"),
    (lambda t: t.replace('version = "6.1.1-1"', ""), "version must be a non-empty string"),
    (lambda t: t.replace('name = "k1"', 'name = "k1"\nflavour = "x"'), "unknown key(s) flavour"),
    (lambda t: t + t, "duplicate name"),
    (lambda t: t.replace("debs = [", "debs = [] #"), "debs must be a non-empty list"),
    (lambda t: "[matrix]\ntests = 'tests/x.py'\n" + t, "[matrix].tests must be a list"),
    (lambda t: "", "no [[kernel]] entries"),
    (lambda t: t + "\n[[kernel]\n", "kernels.toml: "),
])
def test_bad_kernel_lists_name_the_problem(mutation, message):
    with pytest.raises(MatrixError) as exc:
        parse_kernels(mutation(MINIMAL))
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_select_kernels():
    config = load_kernels(DEFAULT_KERNELS)
    first = config.kernels[0]
    assert select_kernels(config.kernels, []) == config.kernels
    assert select_kernels(config.kernels, [first.name]) == [first]
    assert select_kernels(config.kernels, [first.kernel]) == [first]
    with pytest.raises(MatrixError, match="no kernel named nope"):
        select_kernels(config.kernels, ["nope"])


# ---- kernel config and modules ----------------------------------------------

GOOD_CONFIG = """
CONFIG_BPF_SYSCALL=y
CONFIG_DEBUG_INFO_BTF=y
CONFIG_NET_9P_VIRTIO=m
CONFIG_9P_FS=m
CONFIG_OVERLAY_FS=m
CONFIG_VIRTIO_PCI=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_LOCALVERSION="-amd64"
"""


def test_kconfig_checks():
    cfg = parse_kconfig(GOOD_CONFIG)
    assert cfg["CONFIG_LOCALVERSION"] == "-amd64"
    assert check_kconfig(cfg) is None
    no_btf = parse_kconfig(GOOD_CONFIG.replace("CONFIG_DEBUG_INFO_BTF=y",
                                               "# CONFIG_DEBUG_INFO_BTF is not set"))
    assert check_kconfig(no_btf) == ("unsupported", "no BTF (CONFIG_DEBUG_INFO_BTF is not set)")
    cloud = parse_kconfig(GOOD_CONFIG.replace("CONFIG_NET_9P_VIRTIO=m", "# CONFIG_NET_9P is not set"))
    status, detail = check_kconfig(cloud)
    assert status == "error" and "cloud-amd64" in detail


MODULES_DEP = """\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/netfs/netfs.ko:
kernel/fs/9p/9p.ko: kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko
"""


def test_module_names():
    assert module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz") == "virtio_rng"
    assert module_name("kernel/net/9p/9pnet_virtio.ko.zst") == "9pnet_virtio"
    assert module_name("kernel/fs/9p/9p.ko") == "9p"


def test_boot_modules_come_dependencies_first():
    deps = parse_modules_dep(MODULES_DEP)
    order = boot_module_order(deps, set())
    names = [module_name(p) for p in order]
    assert sorted(names) == sorted({"virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci",
                                    "9pnet", "9pnet_virtio", "netfs", "9p", "overlay", "virtio_rng"})
    assert len(names) == len(set(names))
    for path, dep_paths in deps.values():
        for dep in dep_paths:
            assert order.index(dep) < order.index(path), (dep, path)


def test_builtin_and_missing_optional_modules_are_skipped():
    deps = parse_modules_dep(MODULES_DEP)
    builtin = parse_modules_builtin("kernel/fs/overlayfs/overlay.ko\nkernel/drivers/virtio/virtio_pci.ko\n")
    names = [module_name(p) for p in boot_module_order(deps, builtin, optional=("nonesuch",))]
    assert "overlay" not in names and "virtio_pci" not in names and "nonesuch" not in names
    assert "9p" in names
    with pytest.raises(KernelError, match="module nonesuch"):
        boot_module_order(deps, set(), wanted=("nonesuch",))


def test_new_debian_layout_is_moved_under_lib_modules(tmp_path):
    rel = "7.3.4+deb13-amd64"
    mods = tmp_path / "usr" / "lib" / "modules" / rel
    (mods / "kernel").mkdir(parents=True)
    (mods / "vmlinuz").write_bytes(b"MZ")
    (mods / "config").write_text(GOOD_CONFIG)
    normalize_module_layout(tmp_path)
    files = find_kernel_files(tmp_path, rel)
    assert files.release == rel
    assert files.vmlinuz == tmp_path / "lib" / "modules" / rel / "vmlinuz"
    assert files.config.read_text() == GOOD_CONFIG
    with pytest.raises(KernelError, match="not 6.1"):
        find_kernel_files(tmp_path, "6.1")


def test_old_debian_layout(tmp_path):
    rel = "6.1.0-56-amd64"
    (tmp_path / "lib" / "modules" / rel).mkdir(parents=True)
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / f"vmlinuz-{rel}").write_bytes(b"MZ")
    with pytest.raises(KernelError, match="no kernel config"):
        find_kernel_files(tmp_path)
    (tmp_path / "boot" / f"config-{rel}").write_text(GOOD_CONFIG)
    assert find_kernel_files(tmp_path).vmlinuz == tmp_path / "boot" / f"vmlinuz-{rel}"


def test_read_module_decompresses(tmp_path):
    import lzma
    (tmp_path / "a.ko.xz").write_bytes(lzma.compress(b"\x7fELFmodule"))
    (tmp_path / "b.ko.gz").write_bytes(gzip.compress(b"\x7fELFmodule"))
    (tmp_path / "c.ko").write_bytes(b"\x7fELFmodule")
    for name in ("a.ko.xz", "b.ko.gz", "c.ko"):
        assert read_module(tmp_path / name) == b"\x7fELFmodule"


# ---- initramfs ---------------------------------------------------------------

def _read_cpio(data: bytes) -> dict[str, tuple[int, bytes, int, int]]:
    """name -> (mode, data, rdev major, rdev minor) of a newc archive."""
    out, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos: pos + filesize]
        pos = (pos + filesize + 3) & ~3
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out[name] = (fields[1], body, fields[9], fields[10])


def test_initramfs_holds_init_busybox_console_and_ordered_modules(tmp_path):
    bb = tmp_path / "busybox"
    bb.write_bytes(b"\x7fELF-busybox")
    conf = init_conf({"CBKM_REPO": "/srv/chainbench", "CBKM_TIMEOUT": 570})
    image = build_initramfs(bb, "#!/bin/busybox sh\necho hi\n", conf,
                            [("virtio", b"m1"), ("9p", b"m2")])
    files = _read_cpio(gzip.decompress(image))
    mode, body, _, _ = files["init"]
    assert mode & 0o170000 == S_IFREG and mode & 0o111 and body.startswith(b"#!/bin/busybox sh")
    mode, _, major, minor = files["dev/console"]
    assert mode & 0o170000 == S_IFCHR and (major, minor) == (5, 1)
    assert files["bin/busybox"][1] == b"\x7fELF-busybox"
    assert files["modules/order"][1] == b"00-virtio.ko\n01-9p.ko\n"
    assert files["modules/01-9p.ko"][1] == b"m2"
    assert files["cbkm.conf"][1].decode() == conf
    # directories come before their contents
    names = list(files)
    assert names.index("modules") < names.index("modules/00-virtio.ko")


def test_init_conf_survives_the_shell(tmp_path):
    values = {"CBKM_REPO": "/srv/it's here", "CBKM_PYTHON": "/a b/python", "CBKM_TIMEOUT": 5}
    conf = tmp_path / "conf"
    conf.write_text(init_conf(values))
    out = subprocess.run(["sh", "-c", f'. {conf}; printf "%s|%s|%s" "$CBKM_REPO" "$CBKM_PYTHON" '
                                      '"$CBKM_TIMEOUT"'], capture_output=True, text=True, check=True)
    assert out.stdout == "/srv/it's here|/a b/python|5"


def test_init_script_is_valid_shell():
    subprocess.run(["sh", "-n", str(KM_DIR / "init.sh")], check=True)


# ---- qemu command line ---------------------------------------------------------

def test_qemu_command_has_no_network_and_a_read_only_root(tmp_path):
    cmd = qemu_command("qemu-system-x86_64", Path("/k/vmlinuz"), Path("/k/initrd"),
                       tmp_path / "out,dir", kvm=False)
    joined = " ".join(cmd)
    assert "-nodefaults" in cmd and "-nographic" in cmd and "-no-reboot" in cmd
    assert not any(a in cmd for a in ("-nic", "-net", "-netdev")) and "virtio-net" not in joined
    assert cmd[cmd.index("-m") + 1] == "2G" and cmd[cmd.index("-smp") + 1] == "2"
    shares = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-virtfs"]
    root = next(s for s in shares if "mount_tag=cbkmroot" in s)
    assert "path=/," in root and "readonly=on" in root
    out = next(s for s in shares if "mount_tag=cbkmout" in s)
    assert f"path={tmp_path}/out,,dir," in out and "readonly" not in out
    assert cmd[cmd.index("-accel") + 1] == "tcg"
    kvm = qemu_command("q", Path("/k"), Path("/i"), tmp_path, kvm=True)
    assert kvm[kvm.index("-accel") + 1] == "kvm" and kvm[kvm.index("-cpu") + 1] == "host"


def test_accel_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(qemu, "kvm_usable", lambda: True)
    (tmp_path / "kvm_intel").mkdir()
    assert choose_accel("auto", tmp_path) == ("kvm", "")
    (tmp_path / "kvm_intel").rmdir()
    (tmp_path / "kvm_pvm").mkdir()
    accel, warning = choose_accel("auto", tmp_path)
    assert accel == "tcg" and "PVM" in warning
    assert choose_accel("kvm", tmp_path) == ("kvm", "")
    assert choose_accel("tcg", tmp_path) == ("tcg", "")
    monkeypatch.setattr(qemu, "kvm_usable", lambda: False)
    assert choose_accel("auto", tmp_path)[0] == "tcg"
    with pytest.raises(MatrixError):
        choose_accel("kvm", tmp_path)


def test_static_elf_detection():
    assert not is_static_elf(Path(os.path.realpath(sys.executable)))
    bb = Path("/bin/busybox")
    if bb.is_file():
        out = subprocess.run(["file", "-L", str(bb)], capture_output=True, text=True)
        if out.returncode == 0 and "statically linked" in out.stdout:
            assert is_static_elf(bb)


def test_paths_the_guest_mounts_over_are_refused():
    with pytest.raises(MatrixError, match="under /run"):
        check_visible_in_guest(Path("/run/km"), "--work-dir")
    check_visible_in_guest(Path("/srv/km"), "--work-dir")
    check_visible_in_guest(Path("/runner/km"), "--work-dir")


def test_one_run_per_work_dir(tmp_path):
    held = lock_work_dir(tmp_path)
    try:
        with pytest.raises(MatrixError, match="another kernel-matrix run"):
            lock_work_dir(tmp_path)
    finally:
        held.close()
    lock_work_dir(tmp_path).close()


# ---- guest output ----------------------------------------------------------------

GUEST_OK = {
    "kernel": "6.1.0-56-amd64", "btf": True, "phase": "done",
    "objects": {"lxc.bpf.o": {"status": "ok", "detail": "", "tail": []},
                "sock.bpf.o": {"status": "ok", "detail": "", "tail": []}},
    "programs": {"lxc.bpf.o": {"from_container": "ok"}, "sock.bpf.o": {"sock4_connect": "ok"}},
    "pytest": {"exit": 0, "timed_out": False, "passed": 150, "failed": 0, "errors": 0,
               "skipped": 2, "summary": "150 passed, 2 skipped in 300.00s", "failures": []},
}


def _guest(**changes) -> dict:
    doc = json.loads(json.dumps(GUEST_OK))
    for key, value in changes.items():
        doc[key] = value
    return doc


def test_console_result_survives_interleaved_kernel_messages():
    doc = _guest()
    console = ("SeaBIOS\r\ncbkm-guest: lxc.bpf.o: ok\r\n@@CBKM-RESULT-BEGIN@@\r\n"
               "[   12.3] random: crng init done\r\n" + json.dumps(doc) + "\r\n"
               "@@CBKM-RESULT-END@@\r\n[   13.0] reboot: Power down\r\n")
    assert parse_console(console) == doc
    assert parse_console("no markers here") is None
    assert parse_console("@@CBKM-RESULT-BEGIN@@\n{\"truncat") is None
    # the last document wins
    assert parse_console(console.replace('"phase": "done"', '"phase": "pytest"') + console) == doc


def test_console_failure_reasons():
    assert console_failure("x\n@@CBKM-FATAL@@ cannot mount the host root over 9p\n") == \
        "guest init: cannot mount the host root over 9p"
    assert console_failure("[    1.5] Kernel panic - not syncing: VFS: Unable to mount root\n"
                           "[    1.6] ---[ end ]---\n") == \
        "Kernel panic - not syncing: VFS: Unable to mount root"
    assert console_failure("\x1bc\x1b[?7lSeaBIOS\nBooting from ROM...\n") == \
        "last console line: Booting from ROM..."
    assert console_failure("") == "no console output"


def test_summary_of_a_passing_guest():
    s = summarize_guest(_guest())
    assert s["status"] == "pass"
    assert s["objects"] == {"lxc.bpf.o": "ok", "sock.bpf.o": "ok"}
    assert (s["passed"], s["failed"], s["skipped"]) == (150, 0, 2)
    assert s["detail"] == "2/2 objects load; 150 tests passed, 2 skipped"
    assert summarize_guest(_guest(pytest=None))["detail"] == "2/2 objects load; no tests run"


def test_summary_of_a_verifier_rejection():
    objects = _guest()["objects"]
    objects["sock.bpf.o"] = {"status": "verifier", "detail": "sock4_connect: R1 invalid mem access "
                             "'scalar' (errno 13)", "tail": ["R1 invalid mem access 'scalar'"]}
    s = summarize_guest(_guest(objects=objects))
    assert s["status"] == "fail"
    assert s["objects"]["sock.bpf.o"] == "verifier: sock4_connect: R1 invalid mem access 'scalar' (errno 13)"
    assert s["detail"].startswith("1/2 objects load; sock.bpf.o: verifier: sock4_connect")


def test_summary_of_failing_tests():
    py = dict(GUEST_OK["pytest"], exit=1, passed=10, failed=1, errors=1,
              failures=["tests.test_maps::test_x: failure: assert 1 == 2"])
    s = summarize_guest(_guest(pytest=py))
    assert s["status"] == "fail" and s["failed"] == 2
    assert "pytest: tests.test_maps::test_x: failure: assert 1 == 2" in s["detail"]


@pytest.mark.parametrize("changes, status, words", [
    ({"btf": False}, "unsupported", "no BTF"),
    ({"phase": "pytest", "pytest": None}, "error", "guest stopped during pytest"),
    ({"guest_error": "ImportError: no module named harness"}, "error", "ImportError"),
    ({"pytest": dict(GUEST_OK["pytest"], exit=2, summary="1 error in 0.5s")}, "error", "pytest exit 2"),
    ({"pytest": dict(GUEST_OK["pytest"], exit=-9, timed_out=True,
                     summary="pytest timed out after 450s")}, "error", "timed out"),
])
def test_summary_of_broken_runs(changes, status, words):
    s = summarize_guest(_guest(**changes))
    assert s["status"] == status and words in s["detail"]


def test_result_document_shape():
    spec = parse_kernels(MINIMAL).kernels[0]
    s = summarize_guest(_guest())
    status, detail = s.pop("status"), s.pop("detail")
    e = kernel_entry(spec, kernel="6.1.0-1-amd64", status=status, detail=detail,
                     duration_s=123.456, accel="tcg", **s)
    for key, kind in (("kernel", str), ("package", str), ("status", str), ("detail", str),
                      ("objects", dict), ("passed", int), ("failed", int), ("duration_s", float)):
        assert isinstance(e[key], kind), key
    assert e["package"] == "linux-image-6.1.0-1-amd64 6.1.1-1" and e["duration_s"] == 123.5
    unsupported = kernel_entry(spec, status="unsupported", detail="no BTF", duration_s=1)
    assert unsupported["kernel"] == "k1" and unsupported["objects"] == {}
    with pytest.raises(ValueError):
        kernel_entry(spec, status="ok", detail="", duration_s=0)
    doc = assemble([e, unsupported], host_kernel="6.18.0", created="2026-01-01T00:00:00+00:00")
    assert list(doc) == ["created", "host_kernel", "kernels"]
    assert json.loads(json.dumps(doc)) == doc
    line = one_line("a\nb   c" + "x" * 500, limit=20)
    assert "\n" not in line and len(line) == 20 and line.endswith("...")


def test_markdown_table():
    spec = parse_kernels(MINIMAL).kernels[0]
    ok = kernel_entry(spec, kernel="6.1.0-1-amd64", status="pass", detail="fine | really",
                      duration_s=61, objects={"lxc.bpf.o": "ok", "sock.bpf.o": "ok"}, passed=3)
    bad = kernel_entry(spec, kernel="5.10.0-46-amd64", status="fail", detail="x",
                       duration_s=50, objects={"lxc.bpf.o": "ok",
                                               "sock.bpf.o": "verifier: sock4_connect: bad"})
    text = markdown(assemble([ok, bad]))
    lines = text.splitlines()
    assert lines[0].startswith("| kernel | suite | package | status | passed | failed | time |")
    assert "| 6.1.0-1-amd64 |" in lines[2] and "| pass | 3 | 0 | 61 s | fine \\| really |" in lines[2]
    assert "| object | 6.1.0-1-amd64 | 5.10.0-46-amd64 |" in text
    assert "| sock.bpf.o | ok | verifier |" in text
    assert "- 5.10.0-46-amd64 sock.bpf.o: verifier: sock4_connect: bad" in text


def test_not_root_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert cli.main(["--only", load_kernels(DEFAULT_KERNELS).kernels[0].name]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kernel-matrix: ERROR: must run as root") and "\n" not in err


# ---- guest side helpers ------------------------------------------------------------

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5" time="1.0">
<testcase classname="tests.test_maps" name="test_a" time="0.1"/>
<testcase classname="tests.test_maps" name="test_b" time="0.1"/>
<testcase classname="tests.test_maps" name="test_c" time="0.1">
  <failure message="assert 1 == 2&#10;  where 1 = f()">trace</failure></testcase>
<testcase classname="tests.test_loader" name="test_d" time="0.1">
  <error message="">fixture 'load' broke
ValueError: boom</error></testcase>
<testcase classname="tests.test_loader" name="test_e" time="0.1"><skipped message="no"/></testcase>
</testsuite></testsuites>"""


def test_parse_junit():
    r = guest.parse_junit(JUNIT)
    assert (r["tests"], r["passed"], r["failed"], r["errors"], r["skipped"]) == (5, 2, 1, 1, 1)
    assert r["failures"] == ["tests.test_maps::test_c: failure: assert 1 == 2 where 1 = f()",
                             "tests.test_loader::test_d: error: ValueError: boom"]


def test_verifier_tail_keeps_the_verifier_s_last_words():
    log = ("libbpf: prog 'sock4_connect': BPF program load failed: Permission denied\n"
           "libbpf: prog 'sock4_connect': -- BEGIN PROG LOAD LOG --\n"
           "0: (b7) r0 = 0\n"
           "1: (85) call bpf_loop#181\n"
           "unknown func bpf_loop#181\n"
           "processed 2 insns (limit 1000000) max_states_per_insn 0\n"
           "-- END PROG LOAD LOG --\n"
           "libbpf: failed to load object 'sock.bpf.o'\n")
    assert guest.verifier_tail(log, 2) == ["1: (85) call bpf_loop#181", "unknown func bpf_loop#181"]
    assert guest.verifier_report_title(log) == ""
    assert guest.verifier_tail("libbpf: only\nlibbpf: lines\n", 1) == ["libbpf: lines"]


@pytest.mark.parametrize("logfile, last, title", [
    ("verifier-5.10.0-46-unchecked_read.log", "R1 offset is outside of the packet", ""),
    # 7.3 follows the classic message with a structured report (Reason, Source
    # context, Suggestion); the classic message is worded differently too.
    ("verifier-7.3.4-unchecked_read.log", "R1 min value is outside of the allowed memory range",
     "Verification failed: Memory Safety: Access outside bounds"),
])
def test_verifier_tail_of_real_logs(logfile, last, title):
    """Logs of tests/bpf/verifier_reject.bpf.o as Debian's kernels wrote them in the matrix."""
    log = (KM_DIR / "testdata" / logfile).read_text()
    tail = guest.verifier_tail(log)
    assert tail[-1] == last
    assert not any(line.startswith(("processed ", "Suggestion", "Reason")) for line in tail)
    assert guest.verifier_report_title(log) == title


def test_pytest_summary_line():
    out = "....F\n=== FAILURES ===\nstuff\n========= 1 failed, 4 passed in 2.01s =========\n"
    assert guest.pytest_summary_line(out) == "1 failed, 4 passed in 2.01s"
    assert guest.pytest_summary_line("") == ""


def test_progress_counts_of_a_killed_pytest():
    out = "." * 40 + " [ 36%]\n" + "..F.sE\n"
    assert guest.parse_progress(out) == {"passed": 43, "failed": 1, "errors": 1, "skipped": 1,
                                         "tests": 46}
    assert guest.parse_progress("ERROR: file or directory not found\n")["tests"] == 0


def test_merging_a_partial_run_into_earlier_results():
    old = [{"name": "a", "status": "pass"}, {"name": "b", "status": "fail"},
           {"name": "gone", "status": "pass"}]
    new = [{"name": "b", "status": "pass"}, {"name": "c", "status": "error"}]
    merged = merge_entries(old, new, ["c", "a", "b"])
    assert merged == [{"name": "c", "status": "error"}, {"name": "a", "status": "pass"},
                      {"name": "b", "status": "pass"}]


# ---- the real thing (opt-in) -------------------------------------------------------

@pytest.mark.skipif(os.environ.get("CHAINBENCH_KERNEL_MATRIX") != "1",
                    reason="boots a Debian kernel under qemu (minutes): set CHAINBENCH_KERNEL_MATRIX=1")
def test_real_boot(tmp_path):
    name = os.environ.get("CHAINBENCH_KERNEL_MATRIX_KERNEL", "bookworm-6.1")
    out = tmp_path / "kernel-matrix.json"
    proc = subprocess.run([sys.executable, "-m", "ci.kernel_matrix", "--only", name,
                           "--out", str(out), "--quiet"], cwd=ROOT, capture_output=True,
                          text=True, timeout=3600)
    assert out.is_file(), proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    (entry,) = doc["kernels"]
    assert entry["status"] in ("pass", "fail"), entry["detail"]
    expected = sorted(p.name for p in (ROOT / "build" / "bpf").glob("*.bpf.o"))
    assert sorted(entry["objects"]) == expected
    assert entry["passed"] > 0
    assert "| kernel |" in proc.stdout
