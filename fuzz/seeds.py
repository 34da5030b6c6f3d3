#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into
fuzz/corpus/<target>/seed-*. Run from anywhere: python3 fuzz/seeds.py

The seeds are meaningful inputs in each target's input format (see the
header comment of each fuzz_targets/*.rs): real login PDU sequences, CDBs
of every command family, valid virtio-scsi descriptor chains, one line per
JSON-RPC method. The fuzzer grows the corpora from them."""

import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- iSCSI

def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def pad4(b):
    return b + b"\0" * (-len(b) % 4)


def frame(bhs, data, hd=False, dd=False):
    out = bytes(bhs)
    if hd:
        out += struct.pack("<I", crc32c(bhs))
    if data:
        p = pad4(data)
        out += p
        if dd:
            out += struct.pack("<I", crc32c(p))
    return out


def kv(*pairs):
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


ISID = bytes([0x80, 0x12, 0x34, 0x56, 0x78, 0x9A])


def login(csg, nsg, transit, data, itt=1, cmd_sn=0, exp_stat_sn=0, tsih=0, cid=0, cont=False):
    bhs = bytearray(48)
    bhs[0] = 0x40 | 0x03
    bhs[1] = (0x80 if transit else 0) | (0x40 if cont else 0) | (csg << 2) | (nsg if transit else 0)
    bhs[5:8] = len(data).to_bytes(3, "big")
    bhs[8:14] = ISID
    bhs[14:16] = tsih.to_bytes(2, "big")
    bhs[16:20] = itt.to_bytes(4, "big")
    bhs[20:22] = cid.to_bytes(2, "big")
    bhs[24:28] = cmd_sn.to_bytes(4, "big")
    bhs[28:32] = exp_stat_sn.to_bytes(4, "big")
    return bhs, data


def text(data, itt=0x10, ttt=0xFFFFFFFF, cmd_sn=0, exp_stat_sn=1, final=True, cont=False):
    bhs = bytearray(48)
    bhs[0] = 0x40 | 0x04
    bhs[1] = (0x80 if final else 0) | (0x40 if cont else 0)
    bhs[5:8] = len(data).to_bytes(3, "big")
    bhs[16:20] = itt.to_bytes(4, "big")
    bhs[20:24] = ttt.to_bytes(4, "big")
    bhs[24:28] = cmd_sn.to_bytes(4, "big")
    bhs[28:32] = exp_stat_sn.to_bytes(4, "big")
    return bhs, data


def nop_out(itt=0x20):
    bhs = bytearray(48)
    bhs[0] = 0x40 | 0x00
    bhs[1] = 0x80
    bhs[16:20] = itt.to_bytes(4, "big")
    bhs[20:24] = (0xFFFFFFFF).to_bytes(4, "big")
    return bhs, b""


INIT = "iqn.1994-05.com.example:client"
OPEN = "iqn.2024-01.org.lunar:fuzz"
CHAP = "iqn.2024-01.org.lunar:chap"

OPERATIONAL = kv(
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
    ("MaxConnections", "1"),
    ("InitialR2T", "Yes"),
    ("ImmediateData", "Yes"),
    ("MaxRecvDataSegmentLength", "262144"),
    ("MaxBurstLength", "262144"),
    ("FirstBurstLength", "65536"),
    ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"),
    ("MaxOutstandingR2T", "1"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
    ("ErrorRecoveryLevel", "0"),
)


def stream(pdus, flags=0, digests_after=None):
    """flags: byte 0 of the pdu_decode input; digests apply after login
    when digests_after = (hd, dd)."""
    out = bytes([flags])
    hd, dd = bool(flags & 1), bool(flags & 2)
    in_login = True
    for bhs, data in pdus:
        if bhs[0] & 0x3F != 0x03 and in_login:
            in_login = False
            if digests_after:
                hd, dd = digests_after
        out += frame(bhs, data, hd, dd)
    return out


def iscsi_seeds():
    t = "pdu_decode"
    sec = kv(("InitiatorName", INIT), ("TargetName", OPEN), ("SessionType", "Normal"), ("AuthMethod", "None"))
    # Normal session: security, operational, full feature; then SendTargets.
    write(t, "normal-login-sendtargets", stream([
        login(0, 1, True, sec),
        login(1, 3, True, OPERATIONAL, cmd_sn=0, exp_stat_sn=1),
        text(kv(("SendTargets", "")), cmd_sn=0, exp_stat_sn=2),
        text(kv(("MaxRecvDataSegmentLength", "8192"), ("X-com.example.foo", "bar")), itt=0x11, cmd_sn=1),
        nop_out(),
    ]))
    # Straight from security to full feature.
    write(t, "login-direct-ffp", stream([
        login(0, 3, True, sec),
        text(kv(("SendTargets", OPEN)), exp_stat_sn=1),
    ]))
    # Discovery session with SendTargets=All.
    disc = kv(("InitiatorName", INIT), ("SessionType", "Discovery"), ("AuthMethod", "None"))
    write(t, "discovery-sendtargets-all", stream([
        login(0, 1, True, disc),
        login(1, 3, True, kv(("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "512"))),
        text(kv(("SendTargets", "All")), exp_stat_sn=2),
        text(b"", ttt=1, exp_stat_sn=3),
    ]))
    # Digests negotiated: CRC32C from the first full-feature PDU on.
    dig = OPERATIONAL.replace(b"HeaderDigest=None", b"HeaderDigest=CRC32C,None").replace(
        b"DataDigest=None", b"DataDigest=CRC32C,None")
    write(t, "digests-crc32c", stream([
        login(0, 1, True, sec),
        login(1, 3, True, dig),
        text(kv(("SendTargets", "")), exp_stat_sn=2),
    ], digests_after=(True, True)))
    # Digests on the login PDUs themselves (flag byte bits 0 and 1).
    write(t, "digests-from-start", stream([login(0, 3, True, sec)], flags=3))
    # CHAP (MD5 and SHA-256 offered); the response cannot be right: the
    # challenge is random, so this exercises the refusal path.
    chap_sec = kv(("InitiatorName", INIT), ("TargetName", CHAP), ("SessionType", "Normal"), ("AuthMethod", "CHAP,None"))
    write(t, "chap", stream([
        login(0, 0, False, chap_sec),
        login(0, 0, False, kv(("CHAP_A", "7,5"))),
        login(0, 1, True, kv(("CHAP_N", "user"), ("CHAP_R", "0x" + "00" * 32), ("CHAP_I", "1"), ("CHAP_C", "0x" + "ab" * 16))),
    ]))
    # A login text split over two PDUs (C bit).
    half = len(sec) // 2
    write(t, "login-continued", stream([
        login(0, 1, False, sec[:half], cont=True),
        login(0, 1, True, sec[half:]),
        login(1, 3, True, OPERATIONAL),
    ]))
    # A text request in two pieces (C bit, then TTT echoed).
    write(t, "text-continued", stream([
        login(0, 3, True, sec),
        text(b"SendTar", final=False, cont=True, exp_stat_sn=1),
        text(b"gets=All\0", ttt=1, exp_stat_sn=2),
    ]))
    # Adding a connection to an existing session (TSIH != 0).
    write(t, "login-add-connection", stream([login(0, 3, True, sec, tsih=1, cid=1)]))
    # A non-login PDU during login.
    write(t, "nop-during-login", stream([nop_out()]))
    # Bad keys and values.
    write(t, "bad-keys", stream([login(0, 1, True, sec + b"MaxRecvDataSegmentLength=abc\0NoEquals\0=x\0")]))


# ---------------------------------------------------------------- SCSI

def cmd(cdb, data=b"", ctl=0):
    cdb = bytes(cdb)
    return bytes([ctl, len(cdb)]) + cdb + struct.pack("<H", len(data)) + data


def c10(op, b1, lba, n, b6=0):
    return bytes([op, b1]) + struct.pack(">I", lba) + bytes([b6]) + struct.pack(">H", n) + b"\0"


def c16(op, b1, lba, n):
    return bytes([op, b1]) + struct.pack(">Q", lba) + struct.pack(">I", n) + b"\0\0"


def c12(op, b1, lba, n):
    return bytes([op, b1]) + struct.pack(">I", lba) + struct.pack(">I", n) + b"\0\0"


def pr_out(sa, typ, key, sakey, flags=0):
    params = struct.pack(">QQ", key, sakey) + b"\0" * 4 + bytes([flags, 0, 0, 0])
    cdb = bytes([0x5F, sa, typ, 0, 0]) + struct.pack(">I", len(params)) + b"\0"
    return cmd(cdb, params)


def scsi_seeds():
    t = "cdb_execute"
    blk = bytes(range(256)) * 2
    singles = {
        "tur": [cmd([0, 0, 0, 0, 0, 0])],
        "inquiry": [cmd([0x12, 0, 0, 0, 96, 0])],
        "inquiry-vpd": [cmd([0x12, 1, p, 0, 255, 0]) for p in (0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2)],
        "read-capacity": [cmd([0x25] + [0] * 9), cmd([0x9E, 0x10] + [0] * 8 + [0, 0, 0, 32, 0, 0])],
        "write-read10": [cmd(c10(0x2A, 0, 8, 1), blk), cmd(c10(0x28, 0, 8, 1))],
        "write-read16-fua": [cmd(c16(0x8A, 0x08, 100, 2), blk * 2), cmd(c16(0x88, 0x08, 100, 2))],
        "write-read12": [cmd(c12(0xAA, 0, 3, 1), blk), cmd(c12(0xA8, 0, 3, 1))],
        "read6-write6": [cmd([0x0A, 0, 0, 5, 1, 0], blk), cmd([0x08, 0, 0, 5, 1, 0])],
        "verify": [cmd(c10(0x2F, 0x02, 8, 1), blk), cmd(c16(0x8F, 0, 8, 4))],
        "mode-sense": [cmd([0x1A, 0, 0x3F, 0, 255, 0]), cmd([0x5A, 0, 0x08, 0, 0, 0, 0, 0, 255, 0]),
                       cmd([0x5A, 0x10, 0x0A, 0, 0, 0, 0, 1, 0, 0])],
        "mode-select-caching": [cmd([0x15, 0x10, 0, 0, 24, 0], bytes([23, 0, 0, 0]) + bytes([0x08, 18, 0x00]) + b"\0" * 17)],
        "mode-select-control-dsense": [cmd([0x15, 0x10, 0, 0, 16, 0], bytes([15, 0, 0, 0]) + bytes([0x0A, 10, 0x04]) + b"\0" * 9),
                                       cmd([0x28, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 1, 0], ctl=2)],
        "request-sense": [cmd([0x03, 0, 0, 0, 252, 0]), cmd([0x03, 1, 0, 0, 252, 0])],
        "report-luns": [cmd([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])],
        "sync-cache": [cmd(c10(0x35, 0, 0, 0)), cmd(c16(0x91, 0, 0, 0))],
        "write-same": [cmd(c10(0x41, 0, 0, 4), blk), cmd(c16(0x93, 0x08, 4, 8), blk), cmd(c16(0x93, 0x01, 4, 8), b"\0" * 512)],
        "unmap": [cmd([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], struct.pack(">HH", 22, 16) + b"\0" * 4 + struct.pack(">QI", 0, 16) + b"\0" * 4)],
        "get-lba-status": [cmd([0x9E, 0x12] + [0] * 8 + [0, 0, 0, 64, 0, 0])],
        "compare-and-write": [cmd(c10(0x2A, 0, 0, 1), blk), cmd(bytes([0x89, 0]) + struct.pack(">Q", 0) + b"\0\0\0\x01\0\0", blk + blk[::-1])],
        "report-opcodes": [cmd([0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]), cmd([0xA3, 0x0C, 1, 0x28, 0, 0, 0, 0, 1, 0, 0, 0]),
                           cmd([0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])],
        "start-stop": [cmd([0x1B, 0, 0, 0, 0x02, 0], ctl=0), cmd([0x1E, 0, 0, 0, 1, 0]), cmd([0x1B, 0, 0, 0, 0x01, 0])],
        "log-sense": [cmd([0x4D, 0, 0x40, 0, 0, 0, 0, 1, 0, 0]), cmd([0x4D, 0, 0x40 | 0x0D, 0, 0, 0, 0, 1, 0, 0])],
        "pr-register-reserve": [pr_out(0x00, 0, 0, 0xAAAA), pr_out(0x01, 0x03, 0xAAAA, 0),
                                cmd([0x5E, 0x00, 0, 0, 0, 0, 0, 1, 0, 0]), cmd([0x5E, 0x01, 0, 0, 0, 0, 0, 1, 0, 0]),
                                cmd([0x5E, 0x02, 0, 0, 0, 0, 0, 1, 0, 0]), cmd([0x5E, 0x03, 0, 0, 0, 0, 0, 1, 0, 0]),
                                cmd(c10(0x2A, 0, 1, 1), blk, ctl=1), pr_out(0x04, 0x03, 0xAAAA, 0xBBBB)],
        "pr-aptpl": [pr_out(0x00, 0, 0, 0x1234, flags=0x01), pr_out(0x01, 0x05, 0x1234, 0)],
        "reserve6-release6": [cmd([0x16, 0, 0, 0, 0, 0]), cmd(c10(0x28, 0, 0, 1), ctl=1), cmd([0x17, 0, 0, 0, 0, 0])],
        "sanitize-overwrite": [cmd([0x48, 0x01, 0, 0, 0, 0, 0, 0, 8, 0], bytes([0x01, 0, 0, 4]) + b"\xde\xad\xbe\xef"),
                               cmd(c10(0x28, 0, 0, 1)), cmd([0x03, 0, 0, 0, 252, 0])],
        "sanitize-block-erase": [cmd([0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0])],
        "format-unit": [cmd([0x04, 0, 0, 0, 0, 0])],
        "write-atomic": [cmd(bytes([0x9C, 0]) + struct.pack(">Q", 16) + b"\0\0\0\x01\0\0", blk)],
        "orwrite": [cmd(bytes([0x8B, 0]) + struct.pack(">Q", 16) + b"\0\0\0\x01\0\0", blk)],
        "extended-copy": [cmd(bytes([0x83, 0x00]) + b"\0" * 8 + struct.pack(">I", 16 + 32 + 28) + b"\0\0",
                              # header: list id, flags, cscd list len, seg list len, inline len
                              bytes([0x01, 0x00]) + struct.pack(">H", 32) + b"\0\0\0\0" + struct.pack(">I", 28) + b"\0\0\0\0"
                              # CSCD: identification descriptor (0xE4), NAA designator
                              + bytes([0xE4, 0, 0, 0, 0x01, 0x03, 0, 8]) + bytes([0x60, 0, 0, 0, 0x12, 0x34, 0x56, 0x78])
                              + b"\0" * 8 + bytes([0, 0, 0, 0, 0, 0, 2, 0])
                              # segment: block to block (0x02)
                              + bytes([0x02, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 1]) + struct.pack(">QQ", 0, 32)),
                          cmd([0x84, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0])],
        "variable-length": [cmd([0x7F, 0, 0, 0, 0, 0, 0, 0x18, 0x00, 0x09] + [0] * 22)],
        "bad": [cmd([0xFF]), cmd([0x28, 0, 0, 0]), cmd(c10(0x28, 0, 0xFFFFFFFF, 0xFFFF)), cmd(c16(0x8A, 0, 2**64 - 1, 1), blk)],
    }
    for name, cmds in singles.items():
        write(t, name, bytes([0x04]) + b"".join(cmds))
    write(t, "4k-thin", bytes([0x05]) + cmd(c16(0x8A, 0, 1, 1), blk * 8) + cmd(c16(0x93, 0x08, 0, 4), blk * 8)
          + cmd([0x9E, 0x12] + [0] * 8 + [0, 0, 0, 64, 0, 0]))
    write(t, "readonly-removable", bytes([0x0A]) + cmd(c10(0x2A, 0, 0, 1), blk) + cmd([0x1B, 0, 0, 0, 0x02, 0])
          + cmd([0x00] * 6) + cmd([0x1B, 0, 0, 0, 0x03, 0]))
    write(t, "everything", bytes([0x04]) + b"".join(c for cmds in singles.values() for c in cmds))


# ---------------------------------------------------------------- virtio

F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


def desc(addr, length, flags, nxt):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def virtio_image(descs, table=0x1000, avail=0x2000, used=0x3000, heads=(0,), buffers=(), indirect=None, qsize=8,
                 flags=0, answer=(0x5A, 4, 0)):
    mem = bytearray(0x8000)
    for i, d in enumerate(descs):
        mem[table + 16 * i: table + 16 * i + 16] = d
    if indirect:
        at, ds = indirect
        for i, d in enumerate(ds):
            mem[at + 16 * i: at + 16 * i + 16] = d
    # avail ring: flags, idx, ring[]
    mem[avail:avail + 4] = struct.pack("<HH", 0, len(heads))
    for i, h in enumerate(heads):
        mem[avail + 4 + 2 * i: avail + 6 + 2 * i] = struct.pack("<H", h)
    for at, b in buffers:
        mem[at:at + len(b)] = b
    hdr = bytes([flags]) + struct.pack("<HHQQQ", heads[0], qsize, table, avail, used) + bytes(answer)
    assert len(hdr) == 32
    return hdr + bytes(mem)


def req_header(cdb, lun=0, tag=7, cdb_size=32):
    lunb = bytes([1, 0, 0x40 | (lun >> 8), lun & 0xFF, 0, 0, 0, 0])
    return lunb + struct.pack("<Q", tag) + bytes([0, 0, 0]) + bytes(cdb).ljust(cdb_size, b"\0")


def virtio_seeds():
    t = "virtio_chain"
    read10 = c10(0x28, 0, 0, 1)
    write10 = c10(0x2A, 0, 0, 1)
    hdr_r = req_header(read10)
    hdr_w = req_header(write10)
    # READ: header out, response + data in.
    write(t, "read", virtio_image(
        [desc(0x4000, len(hdr_r), F_NEXT, 1), desc(0x5000, 108, F_NEXT | F_WRITE, 2), desc(0x6000, 512, F_WRITE, 0)],
        buffers=[(0x4000, hdr_r)], answer=(0x5A, 32, 0)))
    # WRITE: header + data out, response in.
    write(t, "write", virtio_image(
        [desc(0x4000, len(hdr_w), F_NEXT, 1), desc(0x4800, 512, F_NEXT, 2), desc(0x5000, 108, F_WRITE, 0)],
        buffers=[(0x4000, hdr_w), (0x4800, bytes(range(256)) * 2)]))
    # Header split across descriptors, data-out in two pieces, two chains.
    write(t, "split-two-chains", virtio_image(
        [desc(0x4000, 10, F_NEXT, 1), desc(0x400A, len(hdr_w) - 10, F_NEXT, 2), desc(0x4800, 256, F_NEXT, 3),
         desc(0x4900, 256, F_NEXT, 4), desc(0x5000, 108, F_WRITE, 0),
         desc(0x4100, len(hdr_r), F_NEXT, 6), desc(0x5100, 108, F_NEXT | F_WRITE, 7), desc(0x6000, 512, F_WRITE, 0)],
        heads=(0, 5), buffers=[(0x4000, hdr_w), (0x4100, hdr_r), (0x4800, bytes(range(256)) * 2)]))
    # Indirect table.
    write(t, "indirect", virtio_image(
        [desc(0x1800, 48, F_INDIRECT, 0)],
        indirect=(0x1800, [desc(0x4000, len(hdr_r), F_NEXT, 1), desc(0x5000, 108, F_NEXT | F_WRITE, 2),
                           desc(0x6000, 512, F_WRITE, 0)]),
        buffers=[(0x4000, hdr_r)]))
    # Buffers in the region that straddles 4 GiB (flag bit 0), event idx.
    write(t, "high-regions", virtio_image(
        [desc(0x4000, len(hdr_r), F_NEXT, 1), desc(0xFFFF_FF80, 108, F_NEXT | F_WRITE, 2),
         desc(0xFFFF_FFFF_FFFF_E000, 512, F_WRITE, 0)],
        buffers=[(0x4000, hdr_r)], flags=0x03))
    # A loop (1 -> 2 -> 1), an out-of-range buffer, a huge length.
    write(t, "loop", virtio_image([desc(0x4000, len(hdr_r), F_NEXT, 1), desc(0x5000, 16, F_NEXT, 2), desc(0x5000, 16, F_NEXT, 1)],
                                  buffers=[(0x4000, hdr_r)]))
    write(t, "huge-len", virtio_image([desc(0x4000, 0xFFFF_FFF0, F_NEXT, 1), desc(0x5000, 108, F_WRITE, 0)],
                                      buffers=[(0x4000, hdr_r)]))
    # TMF-sized and bad-LUN requests; small cdb/sense sizes (bits 2-5).
    bad_lun = bytes([2, 0, 0, 0, 0, 0, 0, 0]) + hdr_r[8:]
    write(t, "bad-lun-small-sizes", virtio_image(
        [desc(0x4000, len(bad_lun), F_NEXT, 1), desc(0x5000, 32, F_WRITE, 0)], buffers=[(0x4000, bad_lun)], flags=0x14))


# ---------------------------------------------------------------- JSON-RPC

def rpc_seeds():
    t = "control_rpc"
    n = [0]

    def line(method, params=None, notification=False):
        n[0] += 1
        v = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            v["params"] = params
        if not notification:
            v["id"] = n[0]
        return json.dumps(v, separators=(",", ":")).encode()

    calls = {
        "status": [line("status"), line("status", {"target": "iqn.2026-11.dev.lunar:disk0"})],
        "stop-cont": [line("stop"), line("status"), line("cont")],
        "stop-cont-lun": [line("stop", {"lun": 0}), line("cont", {"lun": 0})],
        "lun-add-remove": [line("lun.add", {"spec": "backend=mem,size=1M"}), line("lun.add", {"spec": "backend=null,size=1G,block-size=4096", "lun": 5}),
                           line("lun.remove", {"lun": 5})],
        "lun-move": [line("lun.move", {"lun": 0, "iothread": 1}), line("lun.move", {"lun": 0, "iothread": 0})],
        "lun-resize": [line("lun.resize", {"lun": 0, "size": "32M"}), line("lun.resize", {"lun": 1, "size": 1048576})],
        "lun-error-policy": [line("lun.set_error_policy", {"lun": 0, "werror": "stop", "rerror": "ignore"})],
        "session": [line("session.list"), line("session.kill", {"id": 3})],
        "events": [line("events")],
        "batch": [json.dumps([{"jsonrpc": "2.0", "method": "status", "id": 1}, {"jsonrpc": "2.0", "method": "session.list"}, 5]).encode()],
        "notification": [line("cont", notification=True)],
        "errors": [b"{not json", b"[]", b'{"jsonrpc":"2.0","method":"lun.move","id":"a","params":[1]}',
                   line("nope"), line("lun.resize", {"lun": 0, "size": -1}), line("status", {"extra": True})],
    }
    for name, lines in calls.items():
        write(t, name, b"\n".join(lines))


if __name__ == "__main__":
    iscsi_seeds()
    scsi_seeds()
    virtio_seeds()
    rpc_seeds()
