"""gopacket's names of ICMP types and codes (layers.ICMPv4TypeCode and ICMPv6TypeCode
``String()``), as Hubble prints them in a flow's Summary and labels its ICMP metric:
``EchoRequest``, ``DestinationUnreachable(Port)``, ``EchoReply(Code: 3)``, ``42(0)``."""
from __future__ import annotations

_ICMP4 = {0: ("EchoReply", None),
          3: ("DestinationUnreachable", {0: "Net", 1: "Host", 2: "Protocol", 3: "Port",
                                         4: "FragmentationNeeded", 5: "SourceRoutingFailed",
                                         6: "NetUnknown", 7: "HostUnknown", 8: "SourceIsolated",
                                         9: "NetAdminProhibited", 10: "HostAdminProhibited",
                                         11: "NetTOS", 12: "HostTOS", 13: "CommAdminProhibited",
                                         14: "HostPrecedence", 15: "PrecedenceCutoff"}),
          4: ("SourceQuench", None),
          5: ("Redirect", {0: "Net", 1: "Host", 2: "TOS+Net", 3: "TOS+Host"}),
          8: ("EchoRequest", None), 9: ("RouterAdvertisement", None),
          10: ("RouterSolicitation", None),
          11: ("TimeExceeded", {0: "TTLExceeded", 1: "FragmentReassemblyTimeExceeded"}),
          12: ("ParameterProblem", {0: "PointerIndicatesError", 1: "MissingOption",
                                    2: "BadLength"}),
          13: ("TimestampRequest", None), 14: ("TimestampReply", None),
          15: ("InfoRequest", None), 16: ("InfoReply", None),
          17: ("AddressMaskRequest", None), 18: ("AddressMaskReply", None)}
_ICMP6 = {1: ("DestinationUnreachable", {0: "NoRouteToDst", 1: "AdminProhibited",
                                         2: "BeyondScopeOfSrc", 3: "AddressUnreachable",
                                         4: "PortUnreachable", 5: "SrcAddressFailedPolicy",
                                         6: "RejectRouteToDst"}),
          2: ("PacketTooBig", None),
          3: ("TimeExceeded", {0: "HopLimitExceeded", 1: "FragmentReassemblyTimeExceeded"}),
          4: ("ParameterProblem", {0: "ErroneousHeaderField", 1: "UnrecognizedNextHeader",
                                   2: "UnrecognizedIPv6Option"}),
          128: ("EchoRequest", None), 129: ("EchoReply", None),
          133: ("RouterSolicitation", None), 134: ("RouterAdvertisement", None),
          135: ("NeighborSolicitation", None), 136: ("NeighborAdvertisement", None),
          137: ("Redirect", None)}


def type_code(family: int, icmp_type: int, code: int) -> str:
    """The name of ICMPv4 (*family* 4) or ICMPv6 (6) *icmp_type* / *code*."""
    info = (_ICMP4 if family == 4 else _ICMP6).get(icmp_type)
    if info is None:
        return f"{icmp_type}({code})"
    name, codes = info
    if codes is None:
        return name if code == 0 else f"{name}(Code: {code})"
    return f"{name}({codes[code]})" if code in codes else f"{name}(Code: {code})"
