"""Stack samples as ``perf script`` prints them, folded, ranked and written for speedscope.

``fold(text)`` reads ``perf script`` output (one header line per sample, then its
frames leaf first, one per line, a blank line after) into a ``Folded``: each
distinct stack as one line ``comm;root;...;leaf`` with its sample count (the folded
form flame graph tools read), kernel frames marked ``_[k]``, plus the samples of
the idle loop counted apart (a CPU halted in the idle task is not work).

``top(folded, n, ...)`` ranks the kernel functions of the busy samples by self
samples (the sample's leaf frame is the function) and by inclusive samples (the
function is anywhere in the sample's stack, counted once per sample).

``speedscope(profiles)`` writes one speedscope document (its file format,
https://www.speedscope.app/file-format-schema.json) with one "sampled" profile per
name, weighted in nanoseconds of CPU time (samples x the sampling period of the
cpu-clock event, which counts nanoseconds).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from harness.errors import ChainbenchError

KERNEL_MARK = "_[k]"
#: Addresses from here up are the kernel's (x86-64 and arm64 both).
_KERNEL_SPACE = 0xffff800000000000
#: Leaf functions of a CPU waiting in the idle loop.
IDLE_LEAVES = frozenset({
    "pv_native_safe_halt", "native_safe_halt", "default_idle", "arch_cpu_idle", "cpu_idle_poll",
    "poll_idle", "intel_idle", "intel_idle_irq", "acpi_safe_halt", "acpi_idle_do_entry",
    "mwait_idle_with_hints", "amd_e400_idle", "default_idle_call", "cpuidle_enter_state",
    "do_idle", "cpu_do_idle",
})

_HEADER = re.compile(r"^(?P<comm>\S.*?)\s+(?P<pid>-?\d+)(?:/(?P<tid>\d+))?\s+"
                     r"(?:\[(?P<cpu>\d+)\]\s+)?(?:(?P<time>\d+\.\d+):\s+)?"
                     r"(?P<period>\d+)\s+(?P<event>\S+?):*\s*$")
# The object may itself hold parentheses: "(/memfd:sealed-1a2b (deleted))".
_FRAME = re.compile(r"^\s+(?:(?P<ip>[0-9a-fA-F]+)\s+)?(?P<sym>.*?)\s+\((?P<dso>.*)\)\s*$")
_OFFSET = re.compile(r"\+0x[0-9a-fA-F]+$")


class FoldError(ChainbenchError, ValueError):
    """``perf script`` output with no sample this module can read (one line)."""


@dataclass
class Folded:
    """Folded stack samples of one recording."""
    stacks: Counter = field(default_factory=Counter)   # "comm;root;...;leaf" -> samples
    samples: int = 0            # every sample, idle ones too
    idle_samples: int = 0
    period_ns: float = 0.0      # mean sampling period (cpu-clock: ns of CPU time per sample)
    event: str = ""
    #: Lines that are neither a sample header nor a frame (skipped; a header's frames
    #: up to the next header are skipped with it), the first one kept to show.
    unread_lines: int = 0
    first_unread: str = ""
    #: Busy samples per process: (comm, pid) -> samples.
    by_process: Counter = field(default_factory=Counter)

    @property
    def busy_samples(self) -> int:
        return self.samples - self.idle_samples


def _frame_name(ip: str | None, sym: str, dso: str) -> tuple[str, bool]:
    """(name, kernel?) of one frame: the symbol without its offset; ``[unknown]``
    symbols named by their object; kernel frames (kernel addresses, or a kernel
    object: ``[kernel.kallsyms]``, a module ``[nf_tables]``, a JITed ``bpf_prog_*``)."""
    name = _OFFSET.sub("", sym.strip()) or "[unknown]"
    if ip is not None:
        kernel = int(ip, 16) >= _KERNEL_SPACE
    else:
        kernel = (dso.startswith("[") and dso not in ("[unknown]", "[vdso]", "[vsyscall]")) \
            or name.startswith("bpf_prog_")
    if name == "[unknown]":
        base = dso.rsplit("/", 1)[-1]
        name = f"[unknown {base}]" if base and base != "[unknown]" else "[unknown]"
    return name, kernel


def fold(text: str) -> Folded:
    """Fold ``perf script`` output (default fields, or ``-F comm,pid,tid,cpu,time,period,
    event,ip,sym,dso``: the period must be there).  A line it cannot read is counted
    and skipped (one odd symbol must not lose a whole run); FoldError when text with
    lines in it holds no sample at all."""
    out = Folded()
    period_total = 0
    comm: str | None = None
    pid = 0
    frames: list[tuple[str, bool]] = []
    events: Counter = Counter()

    def finish() -> None:
        if comm is None:
            return
        leaf = frames[0][0] if frames else ""
        if frames and frames[0][1] and leaf in IDLE_LEAVES:
            out.idle_samples += 1
            return
        out.by_process[(comm, pid)] += 1
        parts = [comm.replace(";", ":")]
        parts += [name.replace(";", ":") + (KERNEL_MARK if kernel else "")
                  for name, kernel in reversed(frames)]
        out.stacks[";".join(parts)] += 1

    def unread(number: int, line: str) -> None:
        out.unread_lines += 1
        if not out.first_unread:
            out.first_unread = f"line {number}: {line.strip()[:80]!r}"

    skipping = False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            finish()
            comm, frames, skipping = None, [], False
            continue
        if line[0] not in " \t":
            finish()
            m = _HEADER.match(line)
            comm, frames = None, []
            if not m:
                unread(number, line)
                skipping = True
                continue
            skipping = False
            comm, pid = m.group("comm").strip(), int(m.group("pid"))
            out.samples += 1
            period_total += int(m.group("period"))
            events[m.group("event")] += 1
            continue
        if skipping:
            continue
        m = _FRAME.match(line)
        if comm is None or not m:
            unread(number, line)
            continue
        frames.append(_frame_name(m.group("ip"), m.group("sym"), m.group("dso")))
    finish()
    if not out.samples and out.unread_lines:
        raise FoldError(f"perf script printed no sample this can read ({out.first_unread})")
    out.period_ns = period_total / out.samples if out.samples else 0.0
    out.event = events.most_common(1)[0][0] if events else ""
    return out


def kernel_frames(stack: str) -> list[str]:
    """The kernel functions of a folded stack, root first, without their mark."""
    return [f[:-len(KERNEL_MARK)] for f in stack.split(";")[1:] if f.endswith(KERNEL_MARK)]


def top(folded: Folded, n: int = 20, connections: int | None = None) -> dict:
    """The *n* kernel functions with most self samples and most inclusive samples of
    the busy samples: each with its samples, its fraction of the busy samples, and
    (given the run's *connections*) its CPU µs per connection = samples x period (ns)
    / connections / 1000."""
    self_counts: Counter = Counter()
    incl_counts: Counter = Counter()
    for stack, count in folded.stacks.items():
        frames = stack.split(";")
        if len(frames) > 1 and frames[-1].endswith(KERNEL_MARK):
            self_counts[frames[-1][:-len(KERNEL_MARK)]] += count
        for name in set(kernel_frames(stack)):
            incl_counts[name] += count
    busy = folded.busy_samples

    def rows(counts: Counter) -> list[dict]:
        out = []
        for name, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]:
            row = {"function": name, "samples": count,
                   "fraction": count / busy if busy else 0.0}
            if connections:
                row["us_per_connection"] = count * folded.period_ns / connections / 1e3
            out.append(row)
        return out
    return {"self": rows(self_counts), "inclusive": rows(incl_counts)}


def processes(folded: Folded, n: int = 10) -> list[dict]:
    """The *n* processes (comm and pid) with most busy samples: whose CPU a
    whole-machine recording holds (softirq work is charged to whichever process it
    interrupted)."""
    busy = folded.busy_samples
    return [{"comm": comm, "pid": pid, "samples": c, "fraction": c / busy if busy else 0.0}
            for (comm, pid), c in sorted(folded.by_process.items(),
                                         key=lambda kv: (-kv[1], kv[0]))[:n]]


def select(folded: Folded, keep) -> Folded:
    """The busy samples of *folded* whose stack *keep* (a predicate on the folded
    stack) accepts, as a Folded of their own (same period and event, no idle)."""
    out = Folded(period_ns=folded.period_ns, event=folded.event)
    for stack, count in folded.stacks.items():
        if keep(stack):
            out.stacks[stack] += count
            out.samples += count
    return out


def kept(folded: Folded, limit: int) -> tuple[dict[str, int], int]:
    """The *limit* stacks with most samples (ties by name), and the samples of the rest."""
    ranked = sorted(folded.stacks.items(), key=lambda kv: (-kv[1], kv[0]))
    return dict(ranked[:limit]), sum(c for _, c in ranked[limit:])


def speedscope(profiles: dict[str, tuple[dict[str, int], float]],
               name: str = "chainbench") -> dict:
    """A speedscope document: one "sampled" profile per entry of *profiles*
    (name -> (folded stacks, period in ns)), frames shared, stacks root first,
    weights in nanoseconds."""
    frames: list[dict] = []
    index: dict[str, int] = {}
    out_profiles = []
    for pname, (stacks, period_ns) in profiles.items():
        samples, weights = [], []
        for stack, count in stacks.items():
            ids = []
            for frame in stack.split(";"):
                if frame not in index:
                    index[frame] = len(frames)
                    frames.append({"name": frame})
                ids.append(index[frame])
            samples.append(ids)
            weights.append(round(count * period_ns))
        out_profiles.append({"type": "sampled", "name": pname, "unit": "nanoseconds",
                             "startValue": 0, "endValue": sum(weights),
                             "samples": samples, "weights": weights})
    return {"$schema": "https://www.speedscope.app/file-format-schema.json",
            "shared": {"frames": frames}, "profiles": out_profiles, "name": name,
            "activeProfileIndex": 0, "exporter": "chainbench"}
