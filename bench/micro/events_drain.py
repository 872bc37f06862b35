"""The ring buffer of the micro suite's events cases (bench.micro.events_cases),
drained by the timing process between samples.

For each events case: its collection's ``cb_events`` ring, read with
harness.bpf.RingBuffer (consume: no waiting), and ``cb_events_lost`` (the
records the ring had no room for, per CPU), read before and after each sample.
``after`` writes what the sample produced into its pair record: ``events``
(records drained), ``event_types`` (records by type) and ``lost`` (the growth of
cb_events_lost during the sample).  Records written outside the samples (the
checks run before timing) are drained first by ``drain_all`` and counted apart.
"""
from __future__ import annotations

from harness.abi.cheaders import defines
from harness.bpf import RingBuffer

#: Record type -> name, as Hubble's event types ("trace", "policy-verdict", ...).
TYPE_NAMES = {value: name.removeprefix("CB_EVENT_").lower().replace("_", "-")
              for name, value in defines("lib/events.h", "CB_EVENT_").items()
              if name != "CB_EVENT_CAP"}
_TYPE_OFFSET = 8        # struct cb_event: __u64 ktime_ns, then __u8 type


class EventsDrain:
    """Drains the rings of *cases* (events cases of *bench*, a loaded bench.micro.suite.Bench)."""

    def __init__(self, bench, cases):
        self._rings: dict[str, RingBuffer] = {}
        self._lost_maps = {}
        self._counts: dict[int, int] = {}
        self._lost_before: dict[str, int] = {}
        #: Records drained outside any sample (the checks before timing).
        self.untimed = 0
        try:
            for c in cases:
                coll = bench.collection(c)
                self._rings[c.name] = RingBuffer(coll.maps["cb_events"], self._count)
                self._lost_maps[c.name] = coll.maps["cb_events_lost"]
        except BaseException:
            self.close()
            raise

    def _count(self, raw: bytes) -> None:
        kind = raw[_TYPE_OFFSET] if len(raw) > _TYPE_OFFSET else -1
        self._counts[kind] = self._counts.get(kind, 0) + 1

    def _consume(self, name: str) -> dict[int, int]:
        self._counts = {}
        self._rings[name].consume()
        return self._counts

    def lost(self, name: str) -> int:
        """cb_events_lost of *name*'s ring, summed over the CPUs."""
        return sum(self._lost_maps[name].lookup(0))

    def drain_all(self) -> int:
        """Drain every ring now (records not of a sample); returns how many."""
        n = sum(sum(self._consume(name).values()) for name in self._rings)
        self.untimed += n
        return n

    def before(self, case) -> None:
        self._lost_before[case.name] = self.lost(case.name)

    def after(self, case, rec: dict) -> None:
        """Drain *case*'s ring after its sample and note the records and losses in *rec*."""
        counts = self._consume(case.name)
        rec["events"] = sum(counts.values())
        rec["event_types"] = {TYPE_NAMES.get(k, str(k)): n for k, n in sorted(counts.items())}
        rec["lost"] = self.lost(case.name) - self._lost_before.pop(case.name)

    def close(self) -> None:
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()

    def __enter__(self) -> "EventsDrain":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
