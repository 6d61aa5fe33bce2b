//! Kernel TLS: after the handshake the session's keys and sequence numbers
//! are installed into the socket (`TCP_ULP` "tls", `TLS_TX`, `TLS_RX`), and
//! from then on the kernel seals and opens the records. The descriptor then
//! carries the record state, so handing the connection over is the same as
//! for plain TCP: the manifest holds no record keys, only the TLS 1.3
//! traffic secrets a KeyUpdate derives the next keys from.
//!
//! Whether a machine takes this path is decided per connection
//! ([`choose`]) from the operator's [`KernelTlsMode`] and what a probe of
//! this kernel found ([`kernel_tls`]): a loopback socket is given the ULP
//! and a dummy key, twice. The second key tells whether the kernel can
//! rekey (TLS 1.3 KeyUpdate, Linux 6.14 and later); one that cannot would
//! keep opening records with the old key after the server's KeyUpdate, so
//! `auto` keeps TLS 1.3 sessions in user space there.
//!
//! A nonce is never reused across the move: rustls sealed only the
//! handshake's last record with these keys, the kernel starts at the next
//! sequence number, and for TLS 1.2 AES-GCM (whose explicit nonce the kernel
//! counts up from the IV it is given, where rustls XORs the sequence number
//! in) the kernel's count starts right after every nonce rustls used.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::sync::OnceLock;

use handoff_protocol::tls::{Secret, TlsCipher, TlsDirection, TlsSession, TlsVersion};
use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::sockopt::{TcpTlsRx, TcpTlsTx, TcpUlp, TlsCryptoInfo};
use nix::sys::socket::SetSockOpt;
use nix::sys::socket::{recvmsg, setsockopt, ControlMessageOwned, MsgFlags, TlsGetRecordType};
use zeroize::Zeroize;

use super::record::APPLICATION_DATA;
use super::{TlsError, AVAILABLE_ULP};

/// Whether TLS 1.3 keys on a kernel TLS socket can be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rekey {
    /// A second `TLS_TX` is accepted: KeyUpdate can be followed.
    Supported,
    /// Refused (`EBUSY`: Debian 12's 6.1 and 6.12 in our VM runs; rekey came with
    /// Linux 6.14): a KeyUpdate ends the connection.
    Unsupported,
}

/// What this kernel offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelTls {
    Available {
        rekey: Rekey,
        /// The versions and ciphers whose keys it takes.
        suites: Vec<(TlsVersion, TlsCipher)>,
    },
    /// Why not: each suite's failing step, and the ULPs the kernel lists.
    Absent(String),
}

/// The operator's choice (`--kernel-tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelTlsMode {
    /// Always protect records in user space.
    Off,
    /// Kernel TLS where it can carry the whole session (TLS 1.2, or TLS 1.3
    /// on a kernel that can rekey); user space otherwise.
    #[default]
    Auto,
    /// Kernel TLS for every session, or the connection fails. On a kernel
    /// that cannot rekey, a TLS 1.3 KeyUpdate ends the connection (it is
    /// then opened again).
    Require,
}

impl std::str::FromStr for KernelTlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "auto" => Ok(Self::Auto),
            "require" => Ok(Self::Require),
            other => Err(format!(
                "kernel TLS mode {other:?}: expected off, auto or require"
            )),
        }
    }
}

/// Which record layer a session got, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    Kernel,
    UserSpace(String),
}

/// The steps of installing kernel TLS, to say which one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Ulp,
    Tx,
    Rx,
    RekeyTx,
    RekeyRx,
}

/// Probe this kernel once per process.
pub fn kernel_tls() -> &'static KernelTls {
    static PROBED: OnceLock<KernelTls> = OnceLock::new();
    PROBED.get_or_init(probe)
}

fn probe() -> KernelTls {
    let listed = std::fs::read_to_string(AVAILABLE_ULP)
        .map(|s| format!("{AVAILABLE_ULP}: {:?}", s.trim()))
        .unwrap_or_else(|e| format!("{AVAILABLE_ULP}: {e}"));
    // The ULP itself first: where it is missing, that is the one reason.
    if let Err(why) = probe_suite(None) {
        return KernelTls::Absent(format!("{why} ({listed})"));
    }
    let mut suites = Vec::new();
    let mut refused = Vec::new();
    let mut rekey = Rekey::Unsupported;
    for version in [TlsVersion::Tls13, TlsVersion::Tls12] {
        for cipher in [
            TlsCipher::Aes128Gcm,
            TlsCipher::Aes256Gcm,
            TlsCipher::Chacha20Poly1305,
        ] {
            match probe_suite(Some((version, cipher))) {
                Ok(can_rekey) => {
                    suites.push((version, cipher));
                    if version == TlsVersion::Tls13 && can_rekey {
                        rekey = Rekey::Supported;
                    }
                }
                Err(why) => refused.push(format!("{version:?} {cipher:?}: {why}")),
            }
        }
    }
    if suites.is_empty() {
        return KernelTls::Absent(format!("{} ({listed})", refused.join("; ")));
    }
    KernelTls::Available { rekey, suites }
}

/// Give a fresh loopback socket the TLS ULP and, with a suite, a dummy
/// sending key of it, then a second one: Ok(whether the second was taken,
/// i.e. the kernel rekeys).
fn probe_suite(suite: Option<(TlsVersion, TlsCipher)>) -> Result<bool, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("no loopback socket to probe: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let client = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let _server = listener.accept().map_err(|e| e.to_string())?;
    setsockopt(&client, TcpUlp::default(), b"tls").map_err(|e| format!("TCP_ULP \"tls\": {e}"))?;
    let Some((version, cipher)) = suite else {
        return Ok(false);
    };
    let dummy = TlsDirection {
        seq: 0,
        key: Secret::new(vec![
            0;
            if cipher == TlsCipher::Aes128Gcm {
                16
            } else {
                32
            }
        ]),
        iv: Secret::new(vec![0; 12]),
        traffic_secret: Secret::default(),
    };
    let tx = || {
        let info = crypto_info(version, cipher, &dummy, 0)?;
        setsockopt(&client, TcpTlsTx, &info).map_err(|e| format!("TLS_TX: {e}"))
    };
    tx()?;
    Ok(tx().is_ok())
}

/// Decide the record layer of a session just negotiated.
pub fn choose(
    mode: KernelTlsMode,
    kernel: &KernelTls,
    version: TlsVersion,
    cipher: TlsCipher,
) -> Result<Path, TlsError> {
    let why_not = match (mode, kernel) {
        (KernelTlsMode::Off, _) => "kernel TLS is off (--kernel-tls off)".to_string(),
        (_, KernelTls::Absent(why)) => format!("this kernel offers no TLS: {why}"),
        (_, KernelTls::Available { suites, .. }) if !suites.contains(&(version, cipher)) => {
            format!("this kernel's TLS lacks {cipher:?} for {version:?}")
        }
        (
            KernelTlsMode::Auto,
            KernelTls::Available {
                rekey: Rekey::Unsupported,
                ..
            },
        ) if version == TlsVersion::Tls13 => {
            "this kernel cannot rekey, so it could not follow a TLS 1.3 KeyUpdate".to_string()
        }
        _ => return Ok(Path::Kernel),
    };
    if mode == KernelTlsMode::Require {
        return Err(TlsError::KernelRequired(why_not));
    }
    Ok(Path::UserSpace(why_not))
}

/// Install `session`'s keys and sequence numbers into the socket (whose
/// version and cipher [`choose`] found the kernel takes). Any failure ends
/// the connection: the socket then has the TLS ULP, which is how the
/// supervisor and a successor tell a kernel TLS socket, so it is never used
/// for user-space records.
pub(crate) fn install(sock: BorrowedFd<'_>, session: &TlsSession) -> Result<(), TlsError> {
    let fail = |step| move |errno: Errno| TlsError::KernelInstall { step, errno };
    if session.version == TlsVersion::Tls12 && session.cipher != TlsCipher::Chacha20Poly1305 {
        check_tls12_explicit_nonces(session)?;
    }
    setsockopt(&sock, TcpUlp::default(), b"tls").map_err(fail(Step::Ulp))?;
    let (v, c) = (session.version, session.cipher);
    set(sock, TcpTlsTx, Step::Tx, v, c, &session.tx, session.tx.seq)?;
    set(sock, TcpTlsRx, Step::Rx, v, c, &session.rx, session.rx.seq)
}

/// One direction of a TLS 1.3 KeyUpdate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Tx,
    Rx,
}

/// Replace one direction's key (TLS 1.3 KeyUpdate): the new key's records
/// start at sequence number 0.
pub(crate) fn rekey(
    sock: BorrowedFd<'_>,
    side: Side,
    version: TlsVersion,
    cipher: TlsCipher,
    keys: &TlsDirection,
) -> Result<(), TlsError> {
    match side {
        Side::Tx => set(sock, TcpTlsTx, Step::RekeyTx, version, cipher, keys, 0),
        Side::Rx => set(sock, TcpTlsRx, Step::RekeyRx, version, cipher, keys, 0),
    }
}

/// Hand `keys` to the kernel through `opt` (`TLS_TX` or `TLS_RX`); `step`
/// names it in an error.
fn set<O: SetSockOpt<Val = TlsCryptoInfo>>(
    sock: BorrowedFd<'_>,
    opt: O,
    step: Step,
    version: TlsVersion,
    cipher: TlsCipher,
    keys: &TlsDirection,
    seq: u64,
) -> Result<(), TlsError> {
    let mut info = crypto_info(version, cipher, keys, seq)
        .map_err(|why| TlsError::BadSession(format!("kernel TLS keys: {why}")))?;
    let set = setsockopt(&sock, opt, &info);
    wipe(&mut info);
    set.map_err(|errno| TlsError::KernelInstall { step, errno })
}

/// TLS 1.2 AES-GCM sends an 8-byte explicit nonce with each record. rustls
/// (and our user-space layer) make it `base XOR seq`; the kernel sends the
/// IV it is given and counts it up by one per record. Right after the
/// handshake rustls has sealed exactly one record (its `Finished`, nonce
/// `base`), and the kernel is given `base + 1` ([`crypto_info`]), so it
/// reaches `base` again only after 2^64 records. At any later point the
/// nonces rustls used would no longer be one contiguous run behind the
/// kernel's count, so that is refused.
fn check_tls12_explicit_nonces(session: &TlsSession) -> Result<(), TlsError> {
    if session.tx.seq != 1 {
        return Err(TlsError::BadSession(format!(
            "kernel TLS for TLS 1.2 AES-GCM is installed only right after the handshake (next record 1, not {})",
            session.tx.seq
        )));
    }
    Ok(())
}

fn crypto_info(
    version: TlsVersion,
    cipher: TlsCipher,
    keys: &TlsDirection,
    seq: u64,
) -> Result<TlsCryptoInfo, String> {
    let base = libc::tls_crypto_info {
        version: match version {
            TlsVersion::Tls12 => libc::TLS_1_2_VERSION,
            TlsVersion::Tls13 => libc::TLS_1_3_VERSION,
        },
        cipher_type: match cipher {
            TlsCipher::Aes128Gcm => libc::TLS_CIPHER_AES_GCM_128,
            TlsCipher::Aes256Gcm => libc::TLS_CIPHER_AES_GCM_256,
            TlsCipher::Chacha20Poly1305 => libc::TLS_CIPHER_CHACHA20_POLY1305,
        },
    };
    let key = keys.key.expose();
    let iv = keys.iv.expose();
    if iv.len() != 12 {
        return Err(format!("IV of {} bytes", iv.len()));
    }
    let rec_seq = seq.to_be_bytes();
    // AES-GCM: 4 bytes of salt, then 8 of IV. For TLS 1.2 that IV is the
    // first explicit nonce the kernel sends: the one after the last rustls
    // used ((iv ^ (seq - 1)) + 1, see `check_tls12_explicit_nonces`).
    let gcm_iv = || -> [u8; 8] {
        let mut explicit = [0u8; 8];
        explicit.copy_from_slice(&iv[4..]);
        if version == TlsVersion::Tls12 {
            let last = u64::from_be_bytes(explicit) ^ seq.saturating_sub(1);
            explicit = last.wrapping_add(1).to_be_bytes();
        }
        explicit
    };
    let fixed = |want: usize| -> Result<(), String> {
        if key.len() == want {
            Ok(())
        } else {
            Err(format!("{cipher:?} key of {} bytes", key.len()))
        }
    };
    // The two AES-GCM structures differ only in their key's length.
    macro_rules! gcm {
        ($info:ident, $variant:ident, $len:literal) => {{
            fixed($len)?;
            let mut i = libc::$info {
                info: base,
                iv: gcm_iv(),
                key: [0; $len],
                salt: [0; 4],
                rec_seq,
            };
            i.key.copy_from_slice(key);
            i.salt.copy_from_slice(&iv[..4]);
            TlsCryptoInfo::$variant(i)
        }};
    }
    Ok(match cipher {
        TlsCipher::Aes128Gcm => gcm!(tls12_crypto_info_aes_gcm_128, Aes128Gcm, 16),
        TlsCipher::Aes256Gcm => gcm!(tls12_crypto_info_aes_gcm_256, Aes256Gcm, 32),
        TlsCipher::Chacha20Poly1305 => {
            fixed(32)?;
            let mut i = libc::tls12_crypto_info_chacha20_poly1305 {
                info: base,
                iv: [0; 12],
                key: [0; 32],
                salt: [],
                rec_seq,
            };
            i.key.copy_from_slice(key);
            i.iv.copy_from_slice(iv);
            TlsCryptoInfo::Chacha20Poly1305(i)
        }
    })
}

/// The keys, once handed to the kernel, are not left on the stack.
fn wipe(info: &mut TlsCryptoInfo) {
    match info {
        TlsCryptoInfo::Aes128Gcm(i) => {
            i.key.zeroize();
            i.iv.zeroize();
            i.salt.zeroize();
        }
        TlsCryptoInfo::Aes256Gcm(i) => {
            i.key.zeroize();
            i.iv.zeroize();
            i.salt.zeroize();
        }
        TlsCryptoInfo::Chacha20Poly1305(i) => {
            i.key.zeroize();
            i.iv.zeroize();
        }
    }
}

/// Read one record's worth (or several records of application data) that
/// the kernel opened. Returns the byte count (0: end of stream) and the
/// record's content type. Never blocks.
pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, u8)> {
    let mut space = nix::cmsg_space!(u8);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let got = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT);
        let msg = match got {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(msg) => msg,
        };
        let mut typ = APPLICATION_DATA;
        for cmsg in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::TlsGetRecordType(t) = cmsg {
                typ = match t {
                    TlsGetRecordType::ChangeCipherSpec => 20,
                    TlsGetRecordType::Alert => 21,
                    TlsGetRecordType::Handshake => 22,
                    TlsGetRecordType::ApplicationData => 23,
                    TlsGetRecordType::Unknown(x) => x,
                    _ => 0,
                };
            }
        }
        return Ok((msg.bytes, typ));
    }
}

/// Send one control record (a KeyUpdate answer, an alert), sealed by the
/// kernel. `WouldBlock` when the socket is full.
pub(crate) fn send_control(sock: BorrowedFd<'_>, typ: u8, body: &[u8]) -> io::Result<()> {
    let n = handoff_protocol::ktls::send_record(sock, typ, body)?;
    if n != body.len() {
        return Err(io::Error::other(format!(
            "the kernel took {n} of the {} bytes of a TLS control record",
            body.len()
        )));
    }
    Ok(())
}

/// Whether the socket has the TLS upper-layer protocol (kernel TLS).
pub(crate) fn installed(sock: impl AsFd) -> io::Result<bool> {
    Ok(handoff_protocol::ktls::tcp_ulp(sock.as_fd())? == "tls")
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_protocol::tls::{Records, TlsHash};

    fn keys(seq: u64) -> TlsDirection {
        TlsDirection {
            seq,
            key: Secret::new(vec![7; 16]),
            iv: Secret::new((0..12).collect()),
            traffic_secret: Secret::default(),
        }
    }

    /// TLS 1.2 AES-GCM: rustls sealed its Finished under explicit nonce
    /// `base`; the kernel counts up from `base + 1`, so it never repeats it.
    /// TLS 1.3 and ChaCha20: the IV as it is (the kernel XORs the sequence
    /// number in, as rustls does).
    #[test]
    fn kernel_nonces_start_past_the_ones_rustls_used() {
        let base = u64::from_be_bytes([4, 5, 6, 7, 8, 9, 10, 11]);
        let Ok(TlsCryptoInfo::Aes128Gcm(i)) =
            crypto_info(TlsVersion::Tls12, TlsCipher::Aes128Gcm, &keys(1), 1)
        else {
            panic!("AES-128-GCM info expected");
        };
        assert_eq!(i.salt, [0, 1, 2, 3]);
        assert_eq!(u64::from_be_bytes(i.iv), base + 1);
        assert_eq!(i.rec_seq, 1u64.to_be_bytes());
        assert_eq!(i.key, [7; 16]);
        let Ok(TlsCryptoInfo::Aes128Gcm(i)) =
            crypto_info(TlsVersion::Tls13, TlsCipher::Aes128Gcm, &keys(0), 0)
        else {
            panic!("AES-128-GCM info expected");
        };
        assert_eq!(u64::from_be_bytes(i.iv), base);
        let mut chacha = keys(1);
        chacha.key = Secret::new(vec![7; 32]);
        let Ok(TlsCryptoInfo::Chacha20Poly1305(i)) =
            crypto_info(TlsVersion::Tls12, TlsCipher::Chacha20Poly1305, &chacha, 1)
        else {
            panic!("ChaCha20 info expected");
        };
        assert_eq!(i.iv.to_vec(), (0..12).collect::<Vec<u8>>());
        // A key of the wrong size is refused before the kernel sees it.
        assert!(crypto_info(TlsVersion::Tls13, TlsCipher::Aes256Gcm, &keys(0), 0).is_err());
    }

    /// Past the handshake the nonces rustls used are no longer one run behind
    /// the kernel's count: refused.
    #[test]
    fn tls12_gcm_goes_to_the_kernel_only_right_after_the_handshake() {
        let session = |seq| TlsSession {
            version: TlsVersion::Tls12,
            cipher: TlsCipher::Aes128Gcm,
            hash: TlsHash::Sha256,
            records: Records::UserSpace,
            tx: keys(seq),
            rx: keys(seq),
            pending: Vec::new(),
            pending_handshake: Vec::new(),
            checksum: 0,
        };
        assert!(check_tls12_explicit_nonces(&session(1)).is_ok());
        assert!(check_tls12_explicit_nonces(&session(2)).is_err());
    }
}
