#!/usr/bin/env python3
"""Writes the seed inputs of the vhost, ring, api and state fuzz targets (fuzz/seeds/TARGET/).

Their inputs are byte encodings of operations, decoded by each target (the format is described
at the top of fuzz/fuzz_targets/TARGET.rs and mirrored by the encoders below); change both
together. Run from anywhere: `python3 fuzz/make_seeds.py`. The frame and document seeds are
plain frames and documents, written by hand.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def u8(v):
    return struct.pack("<B", v & 0xFF)


def u16(v):
    return struct.pack("<H", v & 0xFFFF)


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


def blob(b):
    return u16(len(b)) + b


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def udp_frame(payload=b"hello", src=1, dst=2, size=None):
    """An Ethernet + IPv4 + UDP frame from 10.0.0.src to 10.0.0.dst."""
    if size is not None:
        payload = bytes(i & 0xFF for i in range(size - 42))
    eth = bytes([2, 0, 0, 0, 0, dst, 2, 0, 0, 0, 0, src]) + b"\x08\x00"
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 1, 0, 64, 17, 0,
                     bytes([10, 0, 0, src]), bytes([10, 0, 0, dst]))
    udp = struct.pack(">HHHH", 1000, 53, 8 + len(payload), 0)
    return eth + ip + udp + payload


# ---------------------------------------------------------------------------------------------
# vhost (fuzz_targets/vhost.rs)

V_GET_FEATURES, V_SET_FEATURES, V_GET_PROTOCOL_FEATURES, V_SET_PROTOCOL_FEATURES = 0, 1, 2, 3
V_SET_OWNER, V_RESET_OWNER, V_GET_QUEUE_NUM, V_SET_MEM_TABLE = 4, 5, 6, 7
V_SET_VRING_NUM, V_SET_VRING_ADDR, V_SET_VRING_BASE, V_GET_VRING_BASE = 8, 9, 10, 11
V_KICK, V_CALL, V_ERR, V_ENABLE, V_LOG_BASE, V_RAW = 12, 13, 14, 15, 16, 17
V_GUEST_WRITE, V_POST_TX, V_POST_RX, V_WORKER, V_RECONNECT = 18, 19, 20, 21, 22

# SET_FEATURES selector bits.
F_VERSION_1, F_MRG, F_EVENT_IDX, F_ANNOUNCE, F_LOG_ALL, F_PROTOCOL, F_MQ = (1 << i for i in range(7))
# SET_PROTOCOL_FEATURES selector bits.
P_MQ, P_LOG_SHMFD, P_REPLY_ACK = 1, 2, 4

NEED_REPLY = 1  # the flags byte


def v_simple(op, flags=NEED_REPLY):
    return u8(op) + u8(flags)


def v_features(sel):
    return u8(V_SET_FEATURES) + u8(NEED_REPLY) + u8(sel)


def v_protocol(sel):
    return u8(V_SET_PROTOCOL_FEATURES) + u8(0) + u8(sel)


def v_mem_table(regions, again=False):
    """regions: list of (offset pages 0-3, size pages 1-64); again: the same regions (memory)
    as the last table."""
    shape = len(regions) - 1
    out = u8(V_SET_MEM_TABLE) + u8(NEED_REPLY) + u8(shape)
    for off_pages, pages in regions:
        out += u8(off_pages | (0x20 if again else 0)) + u8(pages - 1)
    return out


def v_vq(q):
    return u8(q)


def v_num(q, log2):
    return u8(V_SET_VRING_NUM) + u8(NEED_REPLY) + v_vq(q) + u8(log2)


def v_base(q, base):
    return u8(V_SET_VRING_BASE) + u8(NEED_REPLY) + v_vq(q) + u8(0) + u16(base)


def uva(region, off):
    """A frontend address: region index and byte offset (a multiple of 64)."""
    assert off % 64 == 0
    return u8(region) + u16(off // 64)


def gpa(region, off):
    assert off % 8 == 0
    return u8(region) + u16(off // 8)


def v_addr(q, desc, used, avail, region=0, log=False):
    return (u8(V_SET_VRING_ADDR) + u8(NEED_REPLY) + v_vq(q) + u8(1 if log else 0)
            + uva(region, desc) + uva(region, used) + uva(region, avail))


def v_fd(op, q, nofd=False):
    return u8(op) + u8(NEED_REPLY) + u8(q | (0x10 if nofd else 0))


def v_enable(q, on=1):
    return u8(V_ENABLE) + u8(NEED_REPLY) + v_vq(q) + u8(on)


def v_queue(q, desc, avail, used, region=0, log=False, log2=8, base=0):
    """What QEMU sends to start virtqueue q."""
    return (v_num(q, log2) + v_base(q, base) + v_addr(q, desc, used, avail, region, log)
            + v_fd(V_KICK, q) + v_fd(V_CALL, q) + v_enable(q))


def v_handshake(features, protocol=P_MQ | P_LOG_SHMFD | P_REPLY_ACK):
    return (v_simple(V_GET_FEATURES) + v_simple(V_GET_PROTOCOL_FEATURES) + v_protocol(protocol)
            + v_simple(V_GET_QUEUE_NUM) + v_simple(V_SET_OWNER) + v_features(features))


def v_post(rx, pair, chains):
    """chains: list of lists of (region, offset, len, data) descriptors."""
    out = u8(V_POST_RX if rx else V_POST_TX) + u8(pair) + u8(len(chains) - 1)
    for descs in chains:
        extra = len(descs) - 1
        assert extra <= 3
        out += u8(extra)
        for region, off, length, data in descs:
            out += gpa(region, off) + u16(length) + u8(0)
            if not rx:
                out += blob(data)
    return out


def v_worker(pair=0, k=0, answer=None):
    b = pair | (k << 1) | (0x10 if answer is not None else 0)
    return u8(V_WORKER) + u8(b) + (blob(answer) if answer is not None else b"")


# Layout of pair 0 in region 0, and pair 1 in region 1 (offsets in the region).
RXQ = (0x0000, 0x1000, 0x2000)  # desc, avail, used
TXQ = (0x3000, 0x4000, 0x5000)
RX_BUFS, TX_BUFS = 0x8000, 0x20000


def rx_buffers(n, size=2048, region=0, chained=False):
    if chained:
        return [[(region, RX_BUFS + i * 0x1000, size // 2, b""),
                 (region, RX_BUFS + i * 0x1000 + 0x800, size // 2, b"")] for i in range(n)]
    return [[(region, RX_BUFS + i * 0x800, size, b"")] for i in range(n)]


def tx_frames(frames, region=0, split=False):
    chains = []
    for i, f in enumerate(frames):
        at = TX_BUFS + i * 0x800
        if split:
            # The virtio-net header alone, then the frame.
            chains.append([(region, at, 12, b""), (region, at + 0x400, len(f), f)])
        else:
            chains.append([(region, at, 12 + len(f), f)])
    return chains


def vhost_seeds():
    feats = F_VERSION_1 | F_MRG | F_EVENT_IDX | F_ANNOUNCE | F_PROTOCOL
    start = (v_handshake(feats) + v_mem_table([(0, 64)])
             + v_queue(0, *RXQ) + v_queue(1, *TXQ))
    frames = [udp_frame(b"one"), udp_frame(b"two", size=200), udp_frame(size=1500)]
    write("vhost", "qemu_start", u8(0) + start
          + v_post(True, 0, rx_buffers(8)) + v_post(False, 0, tx_frames(frames))
          + v_worker() + v_worker(answer=udp_frame(b"reject")))

    # Live migration: dirty logging on, a log, rings restarted with it, traffic, logging off.
    log_base = u8(V_LOG_BASE) + u8(NEED_REPLY) + u8(1) + u16(63) + u8(0)
    write("vhost", "migration_log", u8(0) + v_handshake(feats) + v_mem_table([(0, 64)])
          + v_queue(0, *RXQ, log=True) + v_queue(1, *TXQ, log=True)
          + log_base + v_features(feats | F_LOG_ALL)
          + v_post(True, 0, rx_buffers(4, chained=True))
          + v_post(False, 0, tx_frames(frames[:2], split=True)) + v_worker()
          + v_features(feats) + v_post(False, 0, tx_frames(frames[2:])) + v_worker())

    # Two queue pairs, two regions (pair 1 lives in region 1), and a memory table replaced
    # while the rings run.
    mq = (u8(1) + v_handshake(feats | F_MQ) + v_mem_table([(0, 64), (1, 64)])
          + v_queue(0, *RXQ) + v_queue(1, *TXQ)
          + v_queue(2, *RXQ, region=1) + v_queue(3, *TXQ, region=1)
          + v_post(True, 0, rx_buffers(4)) + v_post(True, 1, rx_buffers(4, region=1))
          + v_post(False, 1, tx_frames(frames[:2], region=1)) + v_worker(pair=1, k=1)
          + v_mem_table([(0, 64), (1, 64)], again=True)
          + v_post(False, 0, tx_frames(frames[:1])) + v_worker(pair=0, k=0))
    write("vhost", "multiqueue", mq)

    # A frontend that goes away and comes back: GET_VRING_BASE, a new connection that resumes
    # where the rings stopped, without MRG_RXBUF (10-byte headers) this time.
    again = (v_handshake(F_EVENT_IDX | F_PROTOCOL) + v_mem_table([(0, 64)])
             + v_queue(0, *RXQ, base=0) + v_queue(1, *TXQ, base=3))
    write("vhost", "reconnect", u8(0) + start + v_post(True, 0, rx_buffers(4))
          + v_post(False, 0, tx_frames(frames)) + v_worker()
          + u8(V_GET_VRING_BASE) + u8(0) + v_vq(0) + u8(V_GET_VRING_BASE) + u8(0) + v_vq(1)
          + u8(V_RECONNECT) + again + v_post(True, 0, rx_buffers(2))
          + v_post(False, 0, tx_frames(frames[:1])) + v_worker())

    # A hostile guest: a head outside the table, a loop, a buffer outside memory, a receive
    # buffer in a transmit ring, a buffer over its own ring; tiny mergeable receive buffers.
    hostile = u8(0) + start
    hostile += v_post(True, 0, [[(0, RX_BUFS + i * 64, 64, b"")] for i in range(8)])
    # A descriptor whose next is itself (flags NEXT, next = its own index: the first, 0).
    hostile += (u8(V_POST_TX) + u8(0) + u8(0) + u8(0) + gpa(0, TX_BUFS) + u16(100) + u8(0x80)
                + u16(1) + u16(0) + blob(b""))
    # A buffer far outside memory (raw address).
    hostile += u8(V_POST_TX) + u8(0) + u8(0) + u8(0) + u8(0x80) + u64(1 << 40) + u16(64) + u8(0) + blob(b"")
    # A transmit buffer that is the rx ring's used ring.
    hostile += v_post(False, 0, [[(0, RXQ[2], 64, b"\xff" * 40)]])
    # A frame larger than the tiny receive buffers (mergeable: it spans them).
    hostile += v_post(False, 0, tx_frames([udp_frame(size=600)]))
    hostile += v_worker()
    # A head outside the table: the ring is broken until set up again.
    hostile += u8(V_POST_TX) + u8(0) + u8(0) + u8(0x80) + u16(0x1234) + gpa(0, TX_BUFS) + u16(100) + u8(0) + blob(b"x")
    hostile += v_worker() + v_post(False, 0, tx_frames([udp_frame()])) + v_worker()
    # Set up again: it runs.
    hostile += v_queue(1, *TXQ) + v_post(False, 0, tx_frames([udp_frame()])) + v_worker()
    write("vhost", "hostile_guest", hostile)

    # Requests the backend refuses and goes on from, then ones that end the connection.
    refused = (u8(0) + v_handshake(feats)
               + u8(V_SET_VRING_NUM) + u8(NEED_REPLY) + v_vq(0) + u8(0x80) + u32(300)
               + v_num(4, 8)  # a queue the port does not have
               + u8(V_SET_FEATURES) + u8(NEED_REPLY) + u8(0x80) + u64(1 << 40)
               + u8(V_SET_MEM_TABLE) + u8(NEED_REPLY) + u8(0x80 | 2)  # two regions...
               + (u8(0x80) + u8(63) + u64(0) + u64(0x7F0000000000) + u64(0)) * 2  # ...overlapping
               + u8(V_SET_MEM_TABLE) + u8(NEED_REPLY) + u8(0) + u8(0x40) + u8(63) + u16(16)
               + v_mem_table([(0, 16)])
               + u8(V_LOG_BASE) + u8(NEED_REPLY) + u8(0) + u16(8191) + u8(255)  # past the file
               + v_queue(0, *RXQ) + v_queue(1, *TXQ)
               + u8(V_RAW) + u8(24) + u32(1 | 8) + u8(0) + u16(12) + bytes(12)  # GET_CONFIG
               + v_post(True, 0, rx_buffers(2)) + v_post(False, 0, tx_frames(frames[:1]))
               + v_worker()
               + u8(V_RAW) + u8(5) + u32(1) + u8(0) + u16(8) + u32(99) + u32(0)  # 99 regions
               + u8(V_RAW) + u8(2) + u32(1) + u8(0) + u16(4) + u32(0)  # a short body
               + v_simple(V_GET_FEATURES))
    write("vhost", "refused_requests", refused)


# ---------------------------------------------------------------------------------------------
# ring (fuzz_targets/ring.rs)

R_WRITE, R_POST, R_AVAIL_IDX, R_EVENT, R_POP, R_READ, R_PUSH, R_PUBLISH = range(8)
R_ENQUEUE_FRAME, R_ENQUEUE_BYTES, R_UNPOP, R_PREFETCH, R_RESTART, R_CALL = range(8, 14)
TX, RX = 0, 1
R_BUFS = 0x8000


def r_cfg(log2=4, event_idx=False, base=None):
    a = (0x80 if event_idx else 0) | (0x40 if base is not None else 0)
    return u8(log2) + u8(a) + (u16(base) if base is not None else b"")


def r_desc(off, length, data=None, flags=None):
    """A descriptor of a post: buffer at region offset off (>= R_BUFS)."""
    a = (0x10 if data is not None else 0) | (0x20 if flags is not None else 0)
    out = u8(a) + u16((off - R_BUFS) // 4) + u16(length)
    if flags is not None:
        out += u16(flags[0]) + u16(flags[1])
    if data is not None:
        out += blob(data)
    return out


def r_post(ring, descs, raw_head=None):
    extra = len(descs) - 1
    assert extra <= 3
    shape = extra | (0x80 if raw_head is not None else 0)
    out = u8(shape) + (u16(raw_head) if raw_head is not None else b"")
    return out + b"".join(descs)


def r_op(op, ring=0, sel=0):
    return u8(op) + u8(ring | (sel << 1))


def ring_seeds():
    frame = b"\0" * 12 + udp_frame(size=100)
    head = u8(0) + r_cfg() + r_cfg()
    pre = u8(1) + u8(RX) + r_post(RX, [r_desc(R_BUFS + 0x4000, 2048)])
    ops = (r_op(R_POST, TX, 1) + r_post(TX, [r_desc(R_BUFS, len(frame), frame)])
           + r_post(TX, [r_desc(R_BUFS + 0x800, 12, b"\0" * 12),
                         r_desc(R_BUFS + 0x1000, 60, udp_frame(size=60))])
           + r_op(R_POST, RX, 2) + r_post(RX, [r_desc(R_BUFS + 0x5000, 2048)])
           + r_post(RX, [r_desc(R_BUFS + 0x6000, 2048)]) + r_post(RX, [r_desc(R_BUFS + 0x7000, 2048)])
           + r_op(R_POP, TX, 3) + r_op(R_READ, TX, 0) + u16(12) + u16(64)
           # enqueue_frame(src 0, skip 12, len 100, hdr 12, mrg)
           + u8(R_ENQUEUE_FRAME) + u8(0 | 2 | 4) + u8(0) + u16(12) + u16(100)
           + u8(R_ENQUEUE_FRAME) + u8(0 | 2 | 4) + u8(1) + u16(12) + u16(60)
           + u8(R_ENQUEUE_BYTES) + u8(0 | 2) + blob(udp_frame(b"answer"))
           + r_op(R_PUSH, TX, 3) + r_op(R_PUBLISH, TX) + r_op(R_PUBLISH, RX))
    write("ring", "tx_to_rx", head + pre + ops)

    # Mergeable buffers of 128 bytes, dirty logging on both rings, a frame spanning them.
    head = u8(0x10 | 0x20 | 0x40) + r_cfg(event_idx=True) + r_cfg(event_idx=True) + u8(0)
    ops = (r_op(R_POST, RX, 7) + b"".join(r_post(RX, [r_desc(R_BUFS + 0x100 * i, 128)]) for i in range(8))
           + u8(R_ENQUEUE_BYTES) + u8(1 | 2 | 4) + blob(bytes(range(256)) * 3)
           + u8(R_ENQUEUE_BYTES) + u8(1 | 2) + blob(b"too big without mrg" * 10)
           + r_op(R_EVENT, RX, 1) + u16(1) + r_op(R_PUBLISH, RX))
    write("ring", "mergeable_logged", head + u8(0) + ops)

    # A guest that breaks its ring: avail.idx far ahead; then a head outside the table.
    head = u8(0) + r_cfg(log2=3) + r_cfg(log2=3)
    ops = (r_op(R_POST, TX, 0) + r_post(TX, [r_desc(R_BUFS, 64, b"x" * 64)])
           + r_op(R_POP, TX, 1) + r_op(R_AVAIL_IDX, TX) + u16(100) + r_op(R_POP, TX, 1)
           + r_op(R_PUSH, TX, 0) + r_op(R_PUBLISH, TX)
           + r_op(R_POST, RX, 0) + r_post(RX, [r_desc(R_BUFS, 64)], raw_head=9)
           + u8(R_ENQUEUE_BYTES) + u8(1) + blob(b"y" * 20) + r_op(R_POP, RX, 1))
    write("ring", "broken_ring", head + u8(0) + ops)

    # Bad chains: a loop, next outside the table, a write buffer on transmit, a buffer
    # straddling the region's end; popped, completed with 0, unpop of good ones.
    head = u8(0) + r_cfg(log2=4) + r_cfg(log2=4)
    ops = (r_op(R_POST, TX, 4)
           + r_post(TX, [r_desc(R_BUFS, 64, flags=(1, 0))])  # NEXT to itself (index 0)
           + r_post(TX, [r_desc(R_BUFS, 64, flags=(1, 99))])  # next outside
           + r_post(TX, [r_desc(R_BUFS, 64, flags=(2, 0))])  # WRITE on transmit
           + r_post(TX, [r_desc(0xFF00, 4000)])  # past the end (64 KiB region)
           + r_post(TX, [r_desc(R_BUFS + 0x400, 64, b"ok")])
           + r_op(R_POP, TX, 5) + r_op(R_UNPOP, TX, 1) + r_op(R_POP, TX, 1)
           + r_op(R_PUSH, TX, 1) + r_op(R_PUBLISH, TX))
    write("ring", "bad_chains", head + u8(0) + ops)

    # EVENT_IDX and restarts: used_event, a call eventfd, a restart at another base (resync to
    # used.idx), prefetch hints past what is there.
    head = u8(1) + r_cfg(event_idx=True) + r_cfg(event_idx=True)
    ops = (r_op(R_CALL, TX, 1) + r_op(R_POST, TX, 1) + r_post(TX, [r_desc(R_BUFS, 80, b"a" * 80)])
           + r_post(TX, [r_desc(R_BUFS + 0x100, 80, b"b" * 80)])
           + r_op(R_EVENT, TX, 1) + u16(0) + r_op(R_POP, TX, 1) + r_op(R_PUSH, TX, 0)
           + r_op(R_PUBLISH, TX) + r_op(R_PREFETCH, TX, 0) + u16(300)
           + r_op(R_PREFETCH, RX, 1) + u16(5) + r_op(R_PREFETCH, RX, 2) + u16(70)
           + r_op(R_RESTART, TX, 1) + u16(7) + r_op(R_POP, TX, 1) + r_op(R_PUSH, TX, 0)
           + r_op(R_PUBLISH, TX))
    write("ring", "event_idx_restart", head + u8(0) + ops)


# ---------------------------------------------------------------------------------------------
# api (fuzz_targets/api.rs)

ROUTES = [
    ("GET", "/v1/health"), ("GET", "/v1/ports"), ("POST", "/v1/ports"), ("GET", "/v1/ports/{n}"),
    ("DELETE", "/v1/ports/{n}"), ("GET", "/v1/ports/{n}/policy"), ("PUT", "/v1/ports/{n}/policy"),
    ("PUT", "/v1/ports/{n}/tags"), ("DELETE", "/v1/ports/{n}/addresses/{a}"),
    ("GET", "/v1/ports/{n}/conns"), ("DELETE", "/v1/ports/{n}/conns"),
    ("GET", "/v1/ports/{n}/conns/export"), ("POST", "/v1/ports/{n}/conns/handover"),
    ("POST", "/v1/ports/{n}/conns/import"), ("POST", "/v1/ports/{n}/trace"),
    ("GET", "/v1/ports/{n}/trace"), ("GET", "/v1/conns"), ("GET", "/v1/conntrack"),
    ("GET", "/v1/macs"), ("GET", "/v1/stats"), ("GET", "/v1/policy"), ("PUT", "/v1/policy"),
    ("GET", "/v1/policy/history"), ("DELETE", "/v1/policy/apps/{n}"), ("GET", "/v1/groups"),
    ("POST", "/v1/reach"), ("GET", "/v1/openapi.json"), ("GET", "/v1/nothing"), ("GET", "/{n}"),
]
NAMES = ["a", "b", "up", "nope", "", "three-tier", "a.b_c-d"]
ADDRESSES = ["10.0.0.2", "10.0.0.9", "fd00::2", "not-an-address", "", "::"]
QUERIES = ["", "?dry_run=true", "?dry_run=false", "?dry_run=1", "?remote=up", "?remote=a",
           "?remote=", "?remote=nope&dry_run=true"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


def req(method, path, body=b"", query="", name=None, addr=None):
    """One request: path is a route template; name/addr fill {n}/{a} (from the lists, or any
    string); method other than the route's is sent as an override."""
    r = [p for m, p in ROUTES].index(path)
    v = QUERIES.index(query)
    if method != ROUTES[r][0]:
        v |= 0x80
    out = u8(r) + u8(v)
    if v & 0x80:
        out += u8(METHODS.index(method))
    for template, value, lst in (("{n}", name, NAMES), ("{a}", addr, ADDRESSES)):
        if template in path:
            if value in lst:
                out += u8(lst.index(value))
            else:
                out += u8(0x80) + blob(value.encode())
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    return out + blob(body)


def api_seeds():
    write("api", "ports", b"".join([
        req("GET", "/v1/ports"),
        req("POST", "/v1/ports", {"name": "c", "socket": "/run/c.sock", "mode": "server",
                                  "segment": 10, "tags": {"tier": "app"},
                                  "mac": "02:00:00:00:00:03", "spoof_guard": "strict",
                                  "addresses": ["10.0.0.3", "fd00::3"], "queues": 2}),
        req("GET", "/v1/ports/{n}", name="c"),
        req("PUT", "/v1/ports/{n}/tags", {"tags": {"tier": "db", "env": "prod"}}, name="c"),
        req("DELETE", "/v1/ports/{n}", name="c"),
        req("POST", "/v1/ports", {"name": "d", "socket": "/run/d.sock", "vlan": 20,
                                  "tenant": "shop"}),
        req("GET", "/v1/stats"),
    ]))
    three_tier = {
        "services": [{"name": "http-alt", "proto": "tcp", "ports": [8080]},
                     {"name": "pg", "proto": "tcp", "ports": 5432}],
        "groups": [{"name": "web", "select": {"tag": "tier", "eq": "web"}},
                   {"name": "db", "select": {"tag": "tier", "eq": "db"}, "app": "three-tier"}],
        "policies": [{"name": "three-tier", "tier": "application", "app": "three-tier",
                      "rules": [{"name": "web-to-db", "src": "web", "dst": "db",
                                 "services": "pg", "action": "allow"}]}],
    }
    with open(os.path.join(HERE, "seeds", "document", "tiers.json"), "rb") as f:
        tiers = json.load(f)
    del tiers["base_revision"]
    write("api", "policy_document", b"".join([
        req("PUT", "/v1/policy", three_tier, query="?dry_run=true"),
        req("PUT", "/v1/policy", three_tier),
        req("GET", "/v1/groups"),
        req("POST", "/v1/reach", {"from": "a", "to": "b", "proto": "tcp", "port": 5432}),
        req("POST", "/v1/reach", {"from": "a", "to": "b", "proto": 17, "src_ip": "10.0.0.1",
                                  "dst_ip": "10.0.0.2"}),
        req("GET", "/v1/policy/history"),
        req("DELETE", "/v1/policy/apps/{n}", name="three-tier", query="?dry_run=true"),
        req("PUT", "/v1/policy", tiers),
        req("GET", "/v1/policy"),
    ]))
    write("api", "port_policy", b"".join([
        req("PUT", "/v1/ports/{n}/policy", {
            "egress": [{"action": "allow", "proto": "tcp", "dst": ["10.0.0.0/8"],
                        "dst_ports": [80, "8000-8080"]},
                       {"action": "reject", "proto": "udp", "dst_ports": 53},
                       {"action": "allow", "proto": "icmp", "icmp_type": 8}],
            "ingress": [{"action": "allow", "src": "10.0.0.2", "proto": "tcp"}],
            "egress_default": "drop", "ingress_default": "reject", "tcp_pickup": True,
            "max_connections": 100, "new_connections_per_sec": 10}, name="a"),
        req("GET", "/v1/ports/{n}/policy", name="a"),
        req("GET", "/v1/ports/{n}/conns", name="a"),
        req("DELETE", "/v1/ports/{n}/conns", name="b"),
        req("GET", "/v1/conns"),
        req("GET", "/v1/conntrack"),
    ]))
    u1 = "11111111-1111-4111-8111-111111111111"
    u2 = "22222222-2222-4222-8222-222222222222"
    export = {"format": 1, "port": "x", "uuid": u1, "host": "other",
              "vnics": [{"name": "x", "uuid": u1}, {"name": "y", "uuid": u2}],
              "connections": [[10, 6, "10.0.0.9", 1234, "10.0.0.1", 80, 0, 1, 2, 1,
                               0, 0, 0, 5, 10, 7],
                              [10, 17, "fd00::9", 53, "fd00::1", 5353, 1, 0, 0, 0,
                               0, 0, 0, 1, 1, 1]]}
    write("api", "migration", b"".join([
        req("GET", "/v1/ports/{n}/conns/export", name="a"),
        req("POST", "/v1/ports/{n}/conns/handover", {"via": "up"}, name="a"),
        req("POST", "/v1/ports/{n}/conns/import", export, query="?remote=up", name="b"),
        req("POST", "/v1/ports/{n}/conns/import", export, name="b"),
        req("GET", "/v1/conns"),
    ]))
    write("api", "trace_and_addresses", b"".join([
        req("POST", "/v1/ports/{n}/trace", {"count": 10}, name="a"),
        req("GET", "/v1/ports/{n}/trace", name="a"),
        req("DELETE", "/v1/ports/{n}/addresses/{a}", name="b", addr="10.0.0.2"),
        req("DELETE", "/v1/ports/{n}/addresses/{a}", name="b", addr="10.0.0.9"),
        req("DELETE", "/v1/ports/{n}/addresses/{a}", name="b", addr="not-an-address"),
        req("GET", "/v1/macs"),
    ]))
    write("api", "bad_requests", b"".join([
        req("POST", "/v1/reach", b'{"from": "a", "to": '),
        req("PUT", "/v1/ports/{n}/tags", {"tags": {"bad key!": "x"}}, name="a"),
        req("PUT", "/v1/ports/{n}/policy", {"egress_default": "maybe"}, name="a"),
        req("PATCH", "/v1/ports"),
        req("GET", "/v1/nothing"),
        req("GET", "/v1/ports/{n}", name="%zz/.."),
        req("POST", "/v1/ports", {"name": "b/c", "socket": "rel.sock", "segment": 70000}),
        req("PUT", "/v1/policy", {"servics": []}),
    ]))


# ---------------------------------------------------------------------------------------------
# state (fuzz_targets/state.rs)

def s_key(proto="tcp", v6=False, src=1, dst=2, zone=1, sport=1000, dport=80):
    sel = {"tcp": 0, "udp": 2, "icmp": 4, "icmp6": 5, "gre": 6}[proto]
    return (u8((1 if v6 else 0) | (sel << 1)) + u8(src) + u8(dst) + u8(zone)
            + u16(sport) + u16(dport))


def s_conn(owner, peer, tcp=True, epoch=1):
    """NewConn after a key; for TCP a SYN of seq 100 with a window scale of 7."""
    out = u8(owner) + u8(peer) + u8(0)
    if tcp:
        out += u8(1 | (7 << 1)) + u32(100) + u32(0) + u8(0x02) + u16(65535) + u16(0)
    return out + u16(epoch) + u16(1) + u16(2)


def s_build(conns):
    """conns: list of (key, conn, b) (b: age in 100 s, then 0x40 touch, 0x80 expire/remove)."""
    out = u8(len(conns))
    for k, c, b in conns:
        out += k + c + u8(b)
    return out


def state_seeds():
    conns = [
        (s_key("tcp", src=1, dst=2, sport=1000), s_conn(0, 1), 0),
        (s_key("tcp", src=2, dst=3, sport=2000, dport=443), s_conn(1, 2), 0x40),
        (s_key("udp", src=1, dst=5, sport=53, dport=53), s_conn(0, 0, tcp=False), 1),
        (s_key("icmp", src=3, dst=1, sport=7, dport=8), s_conn(2, 0, tcp=False), 0),
        (s_key("tcp", v6=True, src=1, dst=2), s_conn(3, 4), 0),
        (s_key("udp", v6=True, src=9, dst=2, sport=5353, dport=5353), s_conn(4, 4, tcp=False), 0x40),
        (s_key("gre", src=7, dst=8, sport=0, dport=0), s_conn(5, 6, tcp=False), 0),
        (s_key("tcp", src=9, dst=10, sport=3000), s_conn(6, 7), 0x80 | 1),  # cut
        (s_key("tcp", src=9, dst=11, sport=3001), s_conn(6, 7), 0x80),  # removed
        (s_key("udp", src=9, dst=12, sport=3002), s_conn(9, 1, tcp=False), 0x3f),  # old
    ]
    exercise = (
        u8(0) + s_key("tcp", src=20, dst=21) + s_conn(1, 2)  # insert
        + u8(5) + u16(0) + u8(0) + u32(101) + u32(0) + u8(0x12) + u16(1000) + u16(0) + u8(1)  # SYN+ACK back
        + u8(4) + u16(1) + u8(1)  # touch
        + u8(7)  # records back into itself
        + u8(8) + u8(1)  # into another table, with limits
        + u8(2) + u16(2)  # remove
        + u8(6) + u16(200)  # sweep later
        + u8(9) + u8(6)  # flush vNIC 6
        + u8(10) + u8(0) + u8(9) + u8(0xff)  # hand vNIC 0 over to 9
        + u8(12) + u8(9) + u8(0)  # and back (rejoin)
        + u8(11) + u64(1 << 20) + u64(3)  # restamp
        + u8(13) + u8(0x0f)  # retain
    )
    # Killed with connections in it; restarted with the same capacity.
    write("state", "killed", u8(0) + u16(5000) + s_build(conns) + u8(0) + u8(0) + u16(10)
          + exercise)
    # Stopped cleanly; restarted with a larger capacity (converted).
    write("state", "converted", u8(0x0c) + u16(5000) + s_build(conns) + u8(1)
          + u8(0) + u16(10) + exercise)
    # Damage a crash cannot leave: a slot copied over another (a duplicate), bits flipped in
    # a meta word, a continuation pointer changed, a tag byte, the open state word.
    k = lambda i: 0x8000 | i  # the i-th slot in use
    damage = (u8(6)
              + u8(3) + u16(k(0)) + u16(k(1) + 40)  # a slot copied elsewhere
              + u8(3) + u16(k(1)) + u16(k(2))  # and over another in use
              + u8(0x80 | 1) + u16(k(3)) + u8(0) + u64(0x8004)  # meta bits flipped
              + u8(1) + u16(k(4)) + u8(1) + u64(5)  # an IPv6 head's continuation moved
              + u8(4) + u16(k(5)) + u8(0x77)  # a tag byte
              + u8(0) + u8(9) + u64(7))  # the state word
    write("state", "damaged", u8(1) + u16(5000) + s_build(conns) + u8(0) + damage + u16(10)
          + exercise)
    # Headers that do not match: another layout version with a correct checksum (refused),
    # a wrong magic, a size that is not the header's.
    write("state", "refused_version", u8(0x40) + u16(100) + u8(1) + u8(0x80) + u8(1) + u64(2)
          + u16(0) + exercise)
    write("state", "bad_size", u8(0x40 | 2) + u16(100) + u8(2) + u8(0x80) + u8(7) + u64(4096)
          + u8(5) + u8(3) + u16(0) + exercise)
    # A raw file: slots written directly (an IPv4 entry a valid hash will not place, an IPv6
    # head without its continuation), then opened.
    live4 = (u64(2 | (1 << 32)) + u64(0x0200000A_0100000A) + u64(80 << 16 | 1000 | (1 << 32) | (6 << 48) | (4 << 56))
             + u64(0) * 3 + u64(5000) + u64(0))
    wide = u64(2 | (1 << 4)) + u64(7) + u64(80 << 16 | 1000 | (1 << 32) | (6 << 48) | (6 << 56)) + u64(0) * 5
    write("state", "raw_slots", u8(0x40) + u16(5000) + u8(2) + u8(2) + u16(0) + live4
          + u8(2) + u16(6) + wide + u16(0) + exercise)


if __name__ == "__main__":
    vhost_seeds()
    ring_seeds()
    api_seeds()
    state_seeds()
