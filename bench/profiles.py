"""Benchmark profiles: what ``chainbench bench --profile quick|full|smoke`` runs.

quick  ``make bench``: 1 and 10k services, one interleaved round, <= 15 min here.
full   every scale of the issue, >= 3 rounds (a bare-metal runner's job).
smoke  ``make test``: a tiny version of each suite, to prove they run end to end;
       its figures are not benchmarks (short runs, few samples) and say so.

All three time the cost of flow events in micro (``events``: the established
ClusterIP hit and the pod-to-pod cases at monitor aggregation off, medium and
none, at 1 service and 1 identity; ``chainbench bench micro --events-only``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace


@dataclass(frozen=True)
class MicroSettings:
    services: tuple[int, ...]
    identities: tuple[int, ...]
    samples: int
    repeat: int
    rounds: int
    #: The cost of flow events (bench.micro.events_cases): the established ClusterIP
    #: hit and the pod-to-pod allowed cases at monitor aggregation off, medium, none.
    events: bool = True
    #: Every program on the default packet (bench.micro.suite.discover_cases).
    generic: bool = True
    #: A user's scenario file: its LB cases (bench.micro.lb_cases.scenario_cases) too.
    scenario: str | None = None


@dataclass(frozen=True)
class ControlSettings:
    scales: tuple[int, ...]
    rounds: int
    timeout: float          # per load; a method that exceeds it is reported "timeout"
    #: Tighter bounds for loaders known not to scale here (README: iptables-nft with
    #: --noflush takes 49 s at 2,000 services and over 20 minutes at 10k).
    method_timeouts: tuple[tuple[str, float], ...] = ()
    #: The services programmed: "realistic" (bench/scenarios/services.yaml.j2's mix of
    #: Service features) or "clusterip" (IPv4 ClusterIPs only, as before issue 15).
    mix: str = "realistic"
    #: A user's scenario file programmed instead of the mix (scales then ignored).
    scenario: str | None = None
    #: Policy programming (bench.policy_control): identity counts of
    #: bench/scenarios/policies.yaml.j2, each resolved and programmed as one node.
    policy_identities: tuple[int, ...] = (1_000, 16_000)


@dataclass(frozen=True)
class MacroSettings:
    scales: tuple[int, ...]
    rounds: int
    seconds: float          # per wrk run
    connections: int
    locust_seconds: int     # 0: no locust
    locust_users: int
    #: Profile one new-connection run per datapath (bench.macro.profiling).
    perf: bool = False


@dataclass(frozen=True)
class Profile:
    name: str
    micro: MicroSettings
    control: ControlSettings
    macro: MacroSettings
    notes: list[str] = field(default_factory=list)


PROFILES = {
    "quick": Profile(
        "quick",
        MicroSettings(services=(1, 10_000), identities=(1, 16_000), samples=5, repeat=100_000,
                      rounds=1, events=True),
        ControlSettings(scales=(1, 10_000), rounds=1, timeout=300,
                        method_timeouts=(("iptables-nft", 60),)),
        MacroSettings(scales=(1, 10_000), rounds=1, seconds=5, connections=32,
                      locust_seconds=10, locust_users=50)),
    "full": Profile(
        "full",
        MicroSettings(services=(1, 1_000, 10_000, 100_000), identities=(1, 1_000, 16_000),
                      samples=7, repeat=100_000, rounds=3, events=True),
        ControlSettings(scales=(1, 1_000, 10_000, 100_000), rounds=3, timeout=900,
                        method_timeouts=(("iptables-nft", 300), ("nft", 600)),
                        policy_identities=(1_000, 16_000, 48_000)),
        MacroSettings(scales=(1, 1_000, 10_000), rounds=3, seconds=8, connections=32,
                      locust_seconds=20, locust_users=100)),
    "smoke": Profile(
        "smoke",
        MicroSettings(services=(1,), identities=(1,), samples=5, repeat=10_000, rounds=1,
                      events=True),
        ControlSettings(scales=(1, 100), rounds=1, timeout=60, policy_identities=(100,)),
        MacroSettings(scales=(1, 100), rounds=1, seconds=1, connections=8,
                      locust_seconds=3, locust_users=5),
        notes=["smoke profile: proves the suites run; its figures are not benchmarks"]),
}


SUITES = ("micro", "control", "macro")


def get(name: str, **overrides) -> Profile:
    """Profile *name*, its settings overridden by field name: each override (``rounds=3``,
    ``scales=(1, 100)``...) replaces that field in every suite's settings that has one
    (``rounds``: all three; ``scales``: control and macro); None leaves a field as the
    profile has it.  A ``timeout`` replaces the per-method bounds too (one bound for
    every method) unless ``method_timeouts`` is given."""
    if name not in PROFILES:
        raise KeyError(f"profile {name!r}: one of {', '.join(PROFILES)}")
    profile = PROFILES[name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "timeout" in overrides:
        overrides.setdefault("method_timeouts", ())
    settings, used = {}, set()
    for suite in SUITES:
        current = getattr(profile, suite)
        mine = {k: v for k, v in overrides.items() if k in {f.name for f in fields(current)}}
        settings[suite] = replace(current, **mine)
        used |= mine.keys()
    unknown = sorted(overrides.keys() - used)
    if unknown:
        raise TypeError(f"no suite has the setting(s) {', '.join(unknown)}")
    return replace(profile, **settings)
