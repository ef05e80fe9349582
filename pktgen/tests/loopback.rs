//! pktgen against an in-process loopback vhost-user backend.
//!
//! The backend is built from the `vhost` crate's backend request handler and `vm-memory`
//! (nothing from the rest of the workspace): it maps the frontend's memfd, translates the ring
//! addresses it is given (frontend virtual addresses) to guest-physical ones, and a poll thread
//! copies every tx frame of the device back into the same device's rx queue. Knobs on the
//! shared state make it split frames over several rx buffers (MRG_RXBUF) or misbehave.
//!
//! Cases: bulk byte-exact round trip across the 2^16 index wrap with `send` and
//! `send_chained`; MRG_RXBUF reassembly; both connection modes; `RawAccess` descriptor chains;
//! rejection of a used length larger than the buffer.

use std::fs::File;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    BackendReqHandler, Error as VuError, GpuBackend, Result as VuResult,
    VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

use pktgen::{
    build_udp_frame, Connect, DeviceConfig, Error, VirtioNet, GUEST_PHYS_BASE,
    VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_RING_F_EVENT_IDX, VIRTQ_DESC_F_NEXT,
};

const OFFERED: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_RING_F_EVENT_IDX
    | VHOST_USER_F_PROTOCOL_FEATURES;
const HDR: usize = 12;

#[derive(Debug, Default, Clone, Copy)]
struct Vring {
    num: u16,
    desc: u64,
    avail: u64,
    used: u64,
    enabled: bool,
    last_avail: u16,
    used_idx: u16,
}

#[derive(Debug, Default)]
struct State {
    acked_features: u64,
    acked_proto: u64,
    mem: Option<GuestMemoryMmap>,
    /// (guest_phys_addr, user_addr, size) of the single region.
    region: (u64, u64, u64),
    vrings: [Vring; 2],
    /// Largest number of bytes the device puts into one rx buffer (forces MRG_RXBUF).
    split: Option<usize>,
    /// Report a used length one byte larger than the rx buffer.
    bad_len: bool,
    /// Requests seen, in order.
    log: Vec<&'static str>,
}

impl State {
    fn hva_to_gpa(&self, hva: u64) -> u64 {
        let (gpa, uva, _) = self.region;
        hva - uva + gpa
    }

    /// Moves every pending tx chain into the rx queue. Returns the number of frames moved.
    fn step(&mut self) -> usize {
        let Some(mem) = self.mem.as_ref() else {
            return 0;
        };
        let [mut rx, mut tx] = self.vrings;
        if !rx.enabled || !tx.enabled || rx.num == 0 {
            return 0;
        }
        let mut moved = 0;
        let avail: u16 = mem
            .load(GuestAddress(tx.avail + 2), Ordering::Acquire)
            .unwrap();
        while tx.last_avail != avail {
            let slot = u64::from(tx.last_avail % tx.num);
            let head: u16 = mem
                .load(GuestAddress(tx.avail + 4 + 2 * slot), Ordering::Relaxed)
                .unwrap();
            let mut pkt = Vec::new();
            let mut id = head;
            loop {
                let d = tx.desc + 16 * u64::from(id);
                let addr: u64 = mem.read_obj(GuestAddress(d)).unwrap();
                let len: u32 = mem.read_obj(GuestAddress(d + 8)).unwrap();
                let flags: u16 = mem.read_obj(GuestAddress(d + 12)).unwrap();
                let next: u16 = mem.read_obj(GuestAddress(d + 14)).unwrap();
                let mut buf = vec![0u8; len as usize];
                mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
                pkt.extend_from_slice(&buf);
                if flags & VIRTQ_DESC_F_NEXT == 0 {
                    break;
                }
                id = next;
            }
            self.deliver(&mut rx, &pkt[HDR..]);
            let u = tx.used + 4 + 8 * u64::from(tx.used_idx % tx.num);
            mem.write_obj(u32::from(head), GuestAddress(u)).unwrap();
            mem.write_obj(0u32, GuestAddress(u + 4)).unwrap();
            tx.used_idx = tx.used_idx.wrapping_add(1);
            tx.last_avail = tx.last_avail.wrapping_add(1);
            moved += 1;
        }
        // Release: publishes the used elements written above.
        mem.store(tx.used_idx, GuestAddress(tx.used + 2), Ordering::Release)
            .unwrap();
        self.vrings = [rx, tx];
        moved
    }

    /// Writes `frame` (with a header) into as many rx buffers as needed; drops it if the rx
    /// ring has too few.
    fn deliver(&self, rx: &mut Vring, frame: &[u8]) {
        let mem = self.mem.as_ref().unwrap();
        let mut data = vec![0u8; HDR];
        data.extend_from_slice(frame);
        let avail: u16 = mem
            .load(GuestAddress(rx.avail + 2), Ordering::Acquire)
            .unwrap();
        let mut off = 0;
        let mut bufs: Vec<(u16, u64, usize)> = Vec::new();
        let mut a = rx.last_avail;
        while off < data.len() {
            if a == avail {
                return; // Not enough buffers: drop.
            }
            let slot = u64::from(a % rx.num);
            let head: u16 = mem
                .load(GuestAddress(rx.avail + 4 + 2 * slot), Ordering::Relaxed)
                .unwrap();
            let d = rx.desc + 16 * u64::from(head);
            let addr: u64 = mem.read_obj(GuestAddress(d)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(d + 8)).unwrap();
            let n = (len as usize)
                .min(self.split.unwrap_or(usize::MAX))
                .min(data.len() - off);
            bufs.push((head, addr, n));
            off += n;
            a = a.wrapping_add(1);
        }
        let nb = u16::try_from(bufs.len()).unwrap();
        data[10..12].copy_from_slice(&nb.to_le_bytes());
        let mut off = 0;
        for &(head, addr, n) in &bufs {
            mem.write_slice(&data[off..off + n], GuestAddress(addr))
                .unwrap();
            off += n;
            let u = rx.used + 4 + 8 * u64::from(rx.used_idx % rx.num);
            let reported = if self.bad_len { 4096 } else { n as u32 };
            mem.write_obj(u32::from(head), GuestAddress(u)).unwrap();
            mem.write_obj(reported, GuestAddress(u + 4)).unwrap();
            rx.used_idx = rx.used_idx.wrapping_add(1);
        }
        rx.last_avail = a;
        // Release: the whole packet's buffers become visible at once.
        mem.store(rx.used_idx, GuestAddress(rx.used + 2), Ordering::Release)
            .unwrap();
    }
}

struct Handler(Arc<Mutex<State>>);

impl Handler {
    fn log(&self, what: &'static str) {
        self.0.lock().unwrap().log.push(what);
    }
}

fn unsupported<T>() -> VuResult<T> {
    Err(VuError::InvalidOperation(
        "not supported by the test backend",
    ))
}

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> VuResult<()> {
        self.log("SET_OWNER");
        Ok(())
    }
    fn reset_owner(&mut self) -> VuResult<()> {
        Ok(())
    }
    fn reset_device(&mut self) -> VuResult<()> {
        unsupported()
    }
    fn get_features(&mut self) -> VuResult<u64> {
        self.log("GET_FEATURES");
        Ok(OFFERED)
    }
    fn set_features(&mut self, features: u64) -> VuResult<()> {
        self.log("SET_FEATURES");
        self.0.lock().unwrap().acked_features = features;
        Ok(())
    }
    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        self.log("SET_MEM_TABLE");
        assert_eq!(ctx.len(), 1, "pktgen sends one region");
        let r = ctx[0];
        let file = files.into_iter().next().unwrap();
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(r.guest_phys_addr),
            r.memory_size as usize,
            Some(FileOffset::new(file, r.mmap_offset)),
        )])
        .unwrap();
        let mut s = self.0.lock().unwrap();
        s.mem = Some(mem);
        s.region = (r.guest_phys_addr, r.user_addr, r.memory_size);
        Ok(None)
    }
    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        self.0.lock().unwrap().vrings[index as usize].num = num as u16;
        Ok(())
    }
    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let mut s = self.0.lock().unwrap();
        let (desc, used, avail) = (
            s.hva_to_gpa(descriptor),
            s.hva_to_gpa(used),
            s.hva_to_gpa(available),
        );
        let v = &mut s.vrings[index as usize];
        (v.desc, v.used, v.avail) = (desc, used, avail);
        Ok(())
    }
    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        let mut s = self.0.lock().unwrap();
        let v = &mut s.vrings[index as usize];
        v.last_avail = base as u16;
        v.used_idx = base as u16;
        Ok(())
    }
    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        let s = self.0.lock().unwrap();
        Ok(VhostUserVringState::new(
            index,
            u32::from(s.vrings[index as usize].last_avail),
        ))
    }
    fn set_vring_kick(&mut self, _index: u8, _fd: Option<File>) -> VuResult<()> {
        self.log("SET_VRING_KICK");
        Ok(())
    }
    fn set_vring_call(&mut self, _index: u8, _fd: Option<File>) -> VuResult<()> {
        Ok(())
    }
    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> VuResult<()> {
        Ok(())
    }
    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        self.log("GET_PROTOCOL_FEATURES");
        Ok(VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG)
    }
    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        self.log("SET_PROTOCOL_FEATURES");
        self.0.lock().unwrap().acked_proto = features;
        Ok(())
    }
    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(2)
    }
    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        self.log("SET_VRING_ENABLE");
        self.0.lock().unwrap().vrings[index as usize].enabled = enable;
        Ok(())
    }
    fn get_config(&mut self, _: u32, _: u32, _: VhostUserConfigFlags) -> VuResult<Vec<u8>> {
        unsupported()
    }
    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> VuResult<()> {
        unsupported()
    }
    fn set_gpu_socket(&mut self, _: GpuBackend) -> VuResult<()> {
        unsupported()
    }
    fn get_shared_object(&mut self, _: VhostUserSharedMsg) -> VuResult<File> {
        unsupported()
    }
    fn get_inflight_fd(&mut self, _: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        unsupported()
    }
    fn set_inflight_fd(&mut self, _: &VhostUserInflight, _: File) -> VuResult<()> {
        unsupported()
    }
    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        unsupported()
    }
    fn add_mem_region(
        &mut self,
        _: &VhostUserSingleMemoryRegion,
        _: File,
        _: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        unsupported()
    }
    fn remove_mem_region(&mut self, _: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        unsupported()
    }
    fn set_device_state_fd(
        &mut self,
        _: VhostTransferStateDirection,
        _: VhostTransferStatePhase,
        _: File,
    ) -> VuResult<Option<File>> {
        unsupported()
    }
    fn check_device_state(&mut self) -> VuResult<()> {
        unsupported()
    }
    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        unsupported()
    }
    fn set_log_base(&mut self, _: &VhostUserLog, _: File) -> VuResult<()> {
        unsupported()
    }
}

/// A running loopback backend; stops its threads on drop and removes the socket it bound.
struct Backend {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The socket file it listens on (None when it dialled pktgen's).
    bound: Option<PathBuf>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The request thread exits once the frontend (dropped by the test first) disconnects.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(p) = &self.bound {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn sock_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "pktgen-loopback-{}-{name}.sock",
        std::process::id()
    ))
}

/// Starts the backend. `dial = false`: it listens on `path` (pktgen uses `Connect::Dial`);
/// `dial = true`: it connects to `path` (pktgen uses `Connect::Listen`).
fn start_backend(path: &Path, dial: bool) -> Backend {
    let state = Arc::new(Mutex::new(State::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let listener = (!dial).then(|| {
        let _ = std::fs::remove_file(path);
        UnixListener::bind(path).unwrap()
    });
    let (st, p) = (state.clone(), path.to_owned());
    let req = std::thread::spawn(move || {
        let stream = match listener {
            Some(l) => l.accept().unwrap().0,
            None => {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    match UnixStream::connect(&p) {
                        Ok(s) => break s,
                        Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => panic!("backend could not dial {}: {e}", p.display()),
                    }
                }
            }
        };
        let mut h = BackendReqHandler::from_stream(stream, Arc::new(Mutex::new(Handler(st))));
        while h.handle_request().is_ok() {}
    });
    let (st, stp) = (state.clone(), stop.clone());
    let dev = std::thread::spawn(move || {
        while !stp.load(Ordering::Relaxed) {
            if st.lock().unwrap().step() == 0 {
                std::thread::yield_now();
            }
        }
    });
    Backend {
        state,
        stop,
        threads: vec![req, dev],
        bound: (!dial).then(|| path.to_owned()),
    }
}

fn frame(seq: u32, len: usize) -> Vec<u8> {
    let mut payload: Vec<u8> = (0..len - 42).map(|i| (i as u32 ^ seq) as u8).collect();
    payload[..4].copy_from_slice(&seq.to_be_bytes());
    build_udp_frame(
        [2, 0, 0, 0, 0, 0xb],
        [2, 0, 0, 0, 0, 0xa],
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        1,
        2,
        &payload,
    )
}

/// Sends `frames` (alternating `send` and `send_chained` per burst if `mixed`), at most
/// `window` outstanding so the backend never finds the rx ring short (it would drop), and
/// checks they come back in order, byte-exact.
fn roundtrip(dev: &mut VirtioNet, frames: &[Vec<u8>], mixed: bool, window: usize) {
    let mut sent = 0;
    let mut got = 0;
    let mut burst = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < frames.len() {
        assert!(Instant::now() < deadline, "stuck: sent {sent} got {got}");
        if sent < frames.len() && sent - got < window {
            let end = (sent + 16).min(frames.len()).min(got + window);
            let refs: Vec<&[u8]> = frames[sent..end].iter().map(Vec::as_slice).collect();
            burst += 1;
            sent += if mixed && burst % 2 == 0 {
                dev.send_chained(&refs)
            } else {
                dev.send(&refs)
            };
        }
        dev.recv(|f| {
            // Not assert_eq: a 9 KiB frame dump is unreadable.
            assert!(
                f == frames[got].as_slice(),
                "frame {got} differs: got {} bytes, want {}",
                f.len(),
                frames[got].len()
            );
            got += 1;
        })
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while dev.poll_tx() != 0 {
        assert!(Instant::now() < deadline, "tx descriptors never returned");
    }
    assert!(dev.take_tx_error().is_none());
}

#[test]
fn handshake_and_bulk_roundtrip_across_index_wrap() {
    let path = sock_path("bulk");
    let be = start_backend(&path, false);
    let mut dev = VirtioNet::connect(Connect::Dial(path.clone()), DeviceConfig::default()).unwrap();
    assert_eq!(dev.negotiated_features(), OFFERED);
    {
        let s = be.state.lock().unwrap();
        assert_eq!(s.acked_features, OFFERED);
        assert_eq!(s.acked_proto, VhostUserProtocolFeatures::REPLY_ACK.bits());
        assert_eq!(s.region.0, GUEST_PHYS_BASE);
        assert_ne!(
            s.region.1, GUEST_PHYS_BASE,
            "ring addresses must be virtual"
        );
        let log = &s.log;
        let pos = |w| log.iter().position(|&x| x == w).unwrap();
        assert!(pos("GET_FEATURES") < pos("SET_FEATURES"));
        assert!(pos("SET_PROTOCOL_FEATURES") < pos("SET_MEM_TABLE"));
        assert!(pos("SET_MEM_TABLE") < pos("SET_VRING_KICK"));
        assert_eq!(log.iter().filter(|&&x| x == "SET_VRING_ENABLE").count(), 2);
    }
    // 70,000 frames > 2^16 avail/used index values; sizes vary from 60 to 1514.
    let frames: Vec<Vec<u8>> = (0..70_000u32)
        .map(|i| frame(i, 60 + (i as usize * 37) % 1455))
        .collect();
    roundtrip(&mut dev, &frames, true, 128);
    drop(dev);
    drop(be);
}

#[test]
fn mrg_rxbuf_reassembly() {
    let path = sock_path("mrg");
    let be = start_backend(&path, false);
    be.state.lock().unwrap().split = Some(700);
    let mut dev = VirtioNet::connect(Connect::Dial(path.clone()), DeviceConfig::default()).unwrap();
    // 1514 -> 3 buffers of <= 700 bytes, 4000 -> 6, 9216 -> 14; 60 -> 1. A window of 16
    // frames needs at most 16 * 14 = 224 of the 256 rx buffers.
    let frames: Vec<Vec<u8>> = [60usize, 1514, 4000, 9216, 700 - HDR, 701 - HDR]
        .iter()
        .cycle()
        .take(3000)
        .enumerate()
        .map(|(i, &l)| frame(i as u32, l))
        .collect();
    roundtrip(&mut dev, &frames, false, 16);
    drop(dev);
    drop(be);
}

#[test]
fn listen_mode() {
    let path = sock_path("listen");
    let _ = std::fs::write(&path, b"stale"); // A stale file must be replaced.
    let be = start_backend(&path, true);
    let mut dev =
        VirtioNet::connect(Connect::Listen(path.clone()), DeviceConfig::default()).unwrap();
    let frames: Vec<Vec<u8>> = (0..1000).map(|i| frame(i, 128)).collect();
    roundtrip(&mut dev, &frames, false, 128);
    drop(dev);
    drop(be);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn raw_access_chain() {
    let path = sock_path("raw");
    let be = start_backend(&path, false);
    let mut dev = VirtioNet::connect(Connect::Dial(path.clone()), DeviceConfig::default()).unwrap();
    let f = frame(7, 300);
    let mut raw = dev.raw();
    let (base, size) = raw.mem_range();
    assert_eq!(base, GUEST_PHYS_BASE);
    // Header, then the frame split in two pieces: a three-descriptor chain 200 -> 201 -> 202.
    let hdr = raw.alloc_buf(HDR);
    let p1 = raw.alloc_buf(100);
    let p2 = raw.alloc_buf(200);
    assert!(hdr >= base && p2 + 200 <= base + size);
    raw.write_guest(hdr, &[0; HDR]);
    raw.write_guest(p1, &f[..100]);
    raw.write_guest(p2, &f[100..]);
    raw.write_desc(1, 200, hdr, HDR as u32, VIRTQ_DESC_F_NEXT, 201);
    raw.write_desc(1, 201, p1, 100, VIRTQ_DESC_F_NEXT, 202);
    raw.write_desc(1, 202, p2, 200, 0, 0);
    let before = raw.used_idx(1);
    raw.push_avail(1, 200);
    raw.publish_avail(1);
    raw.kick(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while raw.used_idx(1) == before {
        assert!(Instant::now() < deadline);
    }
    assert_eq!(raw.used_elem(1, before), (200, 0));
    let mut got = Vec::new();
    while got.is_empty() {
        assert!(Instant::now() < deadline);
        dev.recv(|x| got.push(x.to_vec())).unwrap();
    }
    assert_eq!(got, vec![f]);
    drop(dev);
    drop(be);
}

#[test]
fn rejects_used_len_beyond_buffer() {
    let path = sock_path("badlen");
    let be = start_backend(&path, false);
    be.state.lock().unwrap().bad_len = true;
    let mut dev = VirtioNet::connect(Connect::Dial(path.clone()), DeviceConfig::default()).unwrap();
    assert_eq!(dev.send(&[&frame(1, 60)]), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        assert!(Instant::now() < deadline);
        match dev.recv(|_| panic!("a bad frame was delivered")) {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            err,
            Error::UsedLenTooLong {
                len: 4096,
                max: 2048,
                ..
            }
        ),
        "{err:?}"
    );
    drop(dev);
    drop(be);
}
