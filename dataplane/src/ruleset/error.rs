//! Why a rule list does not compile.

use std::fmt;

/// A field of a [`Rule`](super::Rule), named in [`CompileError`]s as the operator writes it
/// (its variant's name in snake_case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Field {
    /// `src`
    Src,
    /// `dst`
    Dst,
    /// `proto`
    Proto,
    /// `src_ports`
    SrcPorts,
    /// `dst_ports`
    DstPorts,
    /// `icmp_type`
    IcmpType,
    /// `icmp_code`
    IcmpCode,
}

impl Field {
    /// The field's name in a rule.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors from [`Ruleset::compile`](super::Ruleset::compile). Every variant names the rule by
/// its index in the list given to `compile`, and the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileError {
    /// port ranges need proto 6 (TCP) or 17 (UDP)
    PortsNeedTcpUdp {
        /// Index of the rule.
        rule: usize,
        /// `src_ports` or `dst_ports`.
        field: Field,
        /// The rule's `proto` (None = any).
        proto: Option<u8>,
    },
    /// ICMP type and code need proto 1 (ICMP) or 58 (ICMPv6)
    IcmpNeedsIcmpProto {
        /// Index of the rule.
        rule: usize,
        /// `icmp_type` or `icmp_code`.
        field: Field,
        /// The rule's `proto` (None = any).
        proto: Option<u8>,
    },
    /// a port range whose start is after its end
    EmptyPortRange {
        /// Index of the rule.
        rule: usize,
        /// `src_ports` or `dst_ports`.
        field: Field,
        /// First port of the range.
        start: u16,
        /// Last port of the range.
        end: u16,
    },
    /// a prefix length longer than the address
    PrefixTooLong {
        /// Index of the rule.
        rule: usize,
        /// `src` or `dst`.
        field: Field,
        /// The prefix length given.
        prefix: u8,
        /// 32 or 128.
        max: u8,
    },
    /// `src` and `dst` have no address family in common, so the rule can never match
    NoCommonFamily {
        /// Index of the rule.
        rule: usize,
    },
    /// a rule that names peer groups also names addresses on the peer's side (the group
    /// match replaces the peer's address match)
    GroupsWithPeerAddresses {
        /// Index of the rule.
        rule: usize,
    },
    /// `pass` as the ruleset's default action (a verdict is allow, drop or reject)
    PassAsDefault,
    /// more rules than a verdict can index (u32)
    TooManyRules {
        /// Number of rules given.
        count: usize,
    },
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = |p: &Option<u8>| match p {
            None => "any".to_string(),
            Some(p) => p.to_string(),
        };
        match self {
            CompileError::PortsNeedTcpUdp {
                rule,
                field,
                proto: p,
            } => write!(
                f,
                "rule {rule}: {field}: port ranges need proto 6 (TCP) or 17 (UDP), not {}",
                proto(p)
            ),
            CompileError::IcmpNeedsIcmpProto {
                rule,
                field,
                proto: p,
            } => write!(
                f,
                "rule {rule}: {field}: ICMP type and code need proto 1 (ICMP) or 58 (ICMPv6), \
                 not {}",
                proto(p)
            ),
            CompileError::EmptyPortRange {
                rule,
                field,
                start,
                end,
            } => write!(
                f,
                "rule {rule}: {field}: port range {start}-{end} is empty (start after end)"
            ),
            CompileError::PrefixTooLong {
                rule,
                field,
                prefix,
                max,
            } => write!(
                f,
                "rule {rule}: {field}: prefix length {prefix} is longer than the address \
                 (max {max})"
            ),
            CompileError::GroupsWithPeerAddresses { rule } => write!(
                f,
                "rule {rule}: peer_groups and addresses on the peer's side together \
                 (a group match replaces the peer's address)"
            ),
            CompileError::PassAsDefault => {
                f.write_str("pass cannot be the default action (allow, drop or reject)")
            }
            CompileError::NoCommonFamily { rule } => write!(
                f,
                "rule {rule}: src and dst: no address family in common, the rule can never match"
            ),
            CompileError::TooManyRules { count } => {
                write!(
                    f,
                    "{count} rules: a ruleset holds at most {} rules",
                    u32::MAX
                )
            }
        }
    }
}

impl std::error::Error for CompileError {}
