"""Reading packet captures strictly: pcap and pcapng, every record whole.

scapy's readers treat a damaged capture as its end (a truncated record, a record
header cut short) or only log a warning (a record claiming more bytes than
exist), so a broken file reads as fewer packets.  ``read_capture`` refuses such a
file instead, with one line naming the file, the packet (0-based, the index
``test-run`` shows) or pcapng block, its byte offset and the field at fault; a
capture without packets is refused too ("no packets").

pcap: the 24-byte file header (microsecond or nanosecond magic, either byte
order), then 16-byte record headers each followed by ``caplen`` bytes.  pcapng:
Section Header Blocks (byte order per section), Interface Description Blocks
(link type per interface), Enhanced, Simple and (obsolete) Packet Blocks; other
blocks are skipped after their framing is checked.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from harness.errors import InputError

#: libpcap's MAXIMUM_SNAPLEN: no capture it writes or reads has longer records.
MAX_CAPLEN = 262144

_PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",       # microseconds
                b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}       # nanoseconds
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_BOM = 0x1A2B3C4D
_IDB, _PB, _SPB, _EPB = 1, 2, 3, 6


class PcapError(InputError, ValueError):
    """The capture is missing, unreadable or malformed (one line)."""


@dataclass(frozen=True)
class Packet:
    data: bytes
    linktype: int


def read_capture(data: bytes, name: str) -> list[Packet]:
    """The packets of a pcap or pcapng capture *data* (named *name* in errors)."""
    if len(data) >= 4 and data[:4] in _PCAP_MAGICS:
        packets = _read_pcap(data, name)
    elif len(data) >= 4 and struct.unpack("<I", data[:4])[0] == _PCAPNG_SHB:
        packets = _read_pcapng(data, name)
    else:
        what = f"magic 0x{data[:4].hex()}" if len(data) >= 4 else f"{len(data)} bytes"
        raise PcapError(f"{name}: not a pcap/pcapng file ({what})")
    if not packets:
        raise PcapError(f"{name}: no packets")
    return packets


def _read_pcap(data: bytes, name: str) -> list[Packet]:
    endian = _PCAP_MAGICS[data[:4]]
    if len(data) < 24:
        raise PcapError(f"{name}: pcap file header truncated ({len(data)} of 24 bytes)")
    _major, _minor, _zone, _sigfigs, snaplen, network = struct.unpack(endian + "HHiIII", data[4:24])
    linktype = network & 0xFFFF                 # the upper bits carry FCS information
    limit = max(snaplen, MAX_CAPLEN)
    packets = []
    off = 24
    while off < len(data):
        where = f"{name}: packet {len(packets)} (byte {off})"
        header = data[off:off + 16]
        if len(header) < 16:
            raise PcapError(f"{where}: record header truncated ({len(header)} of 16 bytes)")
        _sec, _frac, caplen, _origlen = struct.unpack(endian + "IIII", header)
        if caplen > limit:
            raise PcapError(f"{where}: caplen {caplen} exceeds the snaplen "
                            f"({snaplen}; at most {limit})")
        body = data[off + 16:off + 16 + caplen]
        if len(body) < caplen:
            raise PcapError(f"{where}: record truncated ({len(body)} of caplen {caplen} bytes)")
        packets.append(Packet(body, linktype))
        off += 16 + caplen
    return packets


def _read_pcapng(data: bytes, name: str) -> list[Packet]:
    packets: list[Packet] = []
    interfaces: list[tuple[int, int]] = []          # (linktype, snaplen) of this section
    endian = "<"
    off = block = 0
    while off < len(data):
        where = f"{name}: block {block} (byte {off})"
        if len(data) - off < 12:
            raise PcapError(f"{where}: block header truncated ({len(data) - off} of at least "
                            "12 bytes)")
        btype = struct.unpack(endian + "I", data[off:off + 4])[0]
        if btype == _PCAPNG_SHB or block == 0:
            if struct.unpack("<I", data[off:off + 4])[0] != _PCAPNG_SHB:
                raise PcapError(f"{where}: not a Section Header Block")
            bom = data[off + 8:off + 12]
            if bom == struct.pack("<I", _PCAPNG_BOM):
                endian = "<"
            elif bom == struct.pack(">I", _PCAPNG_BOM):
                endian = ">"
            else:
                raise PcapError(f"{where}: byte-order magic 0x{bom.hex()} is not 1a2b3c4d")
            btype, interfaces = _PCAPNG_SHB, []
        length = struct.unpack(endian + "I", data[off + 4:off + 8])[0]
        if length < 12 or length % 4:
            raise PcapError(f"{where}: block total length {length} (must be a multiple of 4, "
                            "at least 12)")
        if off + length > len(data):
            raise PcapError(f"{where}: block truncated ({len(data) - off} of block total length "
                            f"{length} bytes)")
        trailer = struct.unpack(endian + "I", data[off + length - 4:off + length])[0]
        if trailer != length:
            raise PcapError(f"{where}: trailing block total length {trailer} differs from "
                            f"{length}")
        body = data[off + 8:off + length - 4]
        if btype == _IDB:
            if len(body) < 8:
                raise PcapError(f"{where}: Interface Description Block body of {len(body)} "
                                "bytes (at least 8)")
            linktype, _reserved, snaplen = struct.unpack(endian + "HHI", body[:8])
            interfaces.append((linktype, snaplen))
        elif btype in (_EPB, _PB, _SPB):
            packets.append(_block_packet(btype, body, endian, interfaces,
                                         f"{name}: packet {len(packets)} (block {block}, "
                                         f"byte {off})"))
        off += length
        block += 1
    return packets


def _block_packet(btype: int, body: bytes, endian: str, interfaces: list[tuple[int, int]],
                  where: str) -> Packet:
    if btype == _SPB:
        if not interfaces:
            raise PcapError(f"{where}: Simple Packet Block before any Interface Description Block")
        if len(body) < 4:
            raise PcapError(f"{where}: Simple Packet Block body of {len(body)} bytes (at least 4)")
        origlen = struct.unpack(endian + "I", body[:4])[0]
        linktype, snaplen = interfaces[0]
        caplen = min(origlen, snaplen or origlen, len(body) - 4)
        return Packet(body[4:4 + caplen], linktype)
    fixed = 20
    if len(body) < fixed:
        raise PcapError(f"{where}: packet block body of {len(body)} bytes (at least {fixed})")
    if btype == _EPB:
        iface, _hi, _lo, caplen, _origlen = struct.unpack(endian + "IIIII", body[:fixed])
    else:
        iface, _drops, _hi, _lo, caplen, _origlen = struct.unpack(endian + "HHIIII", body[:fixed])
    if iface >= len(interfaces):
        raise PcapError(f"{where}: interface id {iface} is not described (the section has "
                        f"{len(interfaces)} interfaces)")
    linktype, snaplen = interfaces[iface]
    if caplen > len(body) - fixed:
        raise PcapError(f"{where}: captured length {caplen} exceeds the block "
                        f"({len(body) - fixed} bytes of packet data)")
    if caplen > max(snaplen, MAX_CAPLEN):
        raise PcapError(f"{where}: captured length {caplen} exceeds the snaplen ({snaplen})")
    return Packet(body[fixed:fixed + caplen], linktype)
