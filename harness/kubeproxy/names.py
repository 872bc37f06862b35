"""kube-proxy's object names, computed as kube-proxy computes them.

iptables (pkg/proxy/iptables/proxier.go): ``portProtoHash`` is the first 16
characters of base32(sha256(servicePortName + protocol)), protocol lowercase;
KUBE-SVC-, KUBE-EXT-, KUBE-FW- (and KUBE-SVL-) prefix it.  KUBE-SEP- hashes
servicePortName + protocol + endpoint, the endpoint being "ip:port".

nftables (pkg/proxy/nftables/proxier.go): ``hashAndTruncate(name)`` is the
first 8 characters of base32(sha256(name)), "-", name; the service base name
is "ns/svc/proto/portName" and the endpoint base "ns/svc/proto/portName__ip/port"
(IPv6 colons replaced by dots).  Prefixes: service-, local-, external-,
firewall-, endpoint-, affinity-.

servicePortName is ``ServicePortName.String()``: "ns/name" plus ":port" when the
port has a name.
"""
from __future__ import annotations

import base64
import hashlib

NFT_NAME_MAX = 256                         # knftables.NameLengthMax
_NFT_PREFIX_MAX = 16                       # chainNamePrefixLengthMax
_NFT_BASE_MAX = NFT_NAME_MAX - _NFT_PREFIX_MAX


def _b32sha(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()


def service_port_name(service: str, port_name: str) -> str:
    """ServicePortName.String(): "ns/name" or "ns/name:port"."""
    return f"{service}:{port_name}" if port_name else service


def port_proto_hash(spn: str, protocol: str) -> str:
    return _b32sha(spn + protocol.lower())[:16]


def svc_chain(spn: str, protocol: str) -> str:
    return "KUBE-SVC-" + port_proto_hash(spn, protocol)


def ext_chain(spn: str, protocol: str) -> str:
    return "KUBE-EXT-" + port_proto_hash(spn, protocol)


def fw_chain(spn: str, protocol: str) -> str:
    return "KUBE-FW-" + port_proto_hash(spn, protocol)


def svl_chain(spn: str, protocol: str) -> str:
    return "KUBE-SVL-" + port_proto_hash(spn, protocol)


def sep_chain(spn: str, protocol: str, endpoint: str) -> str:
    """KUBE-SEP- chain of *endpoint* ("ip:port") of a service port."""
    return "KUBE-SEP-" + _b32sha(spn + protocol.lower() + endpoint)[:16]


def hash_and_truncate(name: str) -> str:
    # The first 8 base32 characters encode exactly the first 5 bytes of the digest.
    digest = hashlib.sha256(name.encode()).digest()[:5]
    out = base64.b32encode(digest).decode() + "-" + name
    return out if len(out) <= _NFT_BASE_MAX else out[:_NFT_BASE_MAX - 3] + "..."


def _split(service: str) -> tuple[str, str]:
    ns, _, name = service.partition("/")
    return ns, name


def nft_service_base(service: str, port_name: str, protocol: str) -> str:
    ns, name = _split(service)
    return hash_and_truncate(f"{ns}/{name}/{protocol.lower()}/{port_name}")


def nft_endpoint_base(service: str, port_name: str, protocol: str, ip: str, port: int) -> str:
    ns, name = _split(service)
    return hash_and_truncate(f"{ns}/{name}/{protocol.lower()}/{port_name}__"
                             f"{ip.replace(':', '.')}/{port}")


def nft_service_chain(service: str, port_name: str, protocol: str) -> str:
    return "service-" + nft_service_base(service, port_name, protocol)


def nft_external_chain(service: str, port_name: str, protocol: str) -> str:
    return "external-" + nft_service_base(service, port_name, protocol)


def nft_local_chain(service: str, port_name: str, protocol: str) -> str:
    return "local-" + nft_service_base(service, port_name, protocol)


def nft_firewall_chain(service: str, port_name: str, protocol: str) -> str:
    return "firewall-" + nft_service_base(service, port_name, protocol)


def nft_endpoint_chain(service: str, port_name: str, protocol: str, ip: str, port: int) -> str:
    return "endpoint-" + nft_endpoint_base(service, port_name, protocol, ip, port)


def nft_affinity_set(service: str, port_name: str, protocol: str, ip: str, port: int) -> str:
    return "affinity-" + nft_endpoint_base(service, port_name, protocol, ip, port)
