//! Just enough of the DNS wire format to relay a message without re-encoding it: the
//! header, the question section (to match a response to its query) and the OPT record
//! of a query (to answer it with EDNS). Everything else stays opaque bytes.

/// Length of the fixed DNS header.
pub(crate) const HEADER_LEN: usize = 12;
/// Longest name in wire form (RFC 1035 2.3.4).
const MAX_NAME_LEN: usize = 255;
const TYPE_OPT: u16 = 41;
/// UDP payload size announced in the OPT record of answers made here (DNS flag day 2020).
const EDNS_PAYLOAD: u16 = 1232;

const QR: u16 = 0x8000;
const OPCODE_MASK: u16 = 0x7800;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;
const CD: u16 = 0x0010;
const RCODE_MASK: u16 = 0x000f;

/// Response codes the forwarder looks at.
pub(crate) const RCODE_FORMERR: u8 = 1;
pub(crate) const RCODE_SERVFAIL: u8 = 2;
pub(crate) const RCODE_NOTIMP: u8 = 4;
pub(crate) const RCODE_REFUSED: u8 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub id: u16,
    pub flags: u16,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

impl Header {
    pub fn parse(msg: &[u8]) -> Option<Self> {
        if msg.len() < HEADER_LEN {
            return None;
        }
        let word = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
        Some(Self {
            id: word(0),
            flags: word(2),
            qdcount: word(4),
            ancount: word(6),
            nscount: word(8),
            arcount: word(10),
        })
    }

    pub fn is_response(&self) -> bool {
        self.flags & QR != 0
    }

    pub fn opcode(&self) -> u8 {
        ((self.flags & OPCODE_MASK) >> 11) as u8
    }

    /// The low four bits of the response code (the header part).
    pub fn rcode(&self) -> u8 {
        (self.flags & RCODE_MASK) as u8
    }
}

/// Writes `id` into the header of `msg` (which must be at least a header long).
pub(crate) fn set_id(msg: &mut [u8], id: u16) {
    msg[..2].copy_from_slice(&id.to_be_bytes());
}

/// One entry of a question section: the name uncompressed in wire form, type, class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Question {
    pub name: Vec<u8>,
    pub qtype: u16,
    pub qclass: u16,
}

impl Question {
    /// Same question: names compared ASCII case-insensitively (an upstream may echo
    /// the name in another case, RFC 4343), type and class exactly.
    pub fn matches(&self, other: &Question) -> bool {
        self.qtype == other.qtype
            && self.qclass == other.qclass
            && self.name.eq_ignore_ascii_case(&other.name)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&self.qtype.to_be_bytes());
        out.extend_from_slice(&self.qclass.to_be_bytes());
    }
}

/// Reads the name starting at `pos`, following compression pointers (only backwards,
/// so a loop is impossible). Returns the name uncompressed in wire form and the offset
/// just after the name at `pos`.
pub(crate) fn read_name(msg: &[u8], mut pos: usize) -> Result<(Vec<u8>, usize), String> {
    let mut name = Vec::new();
    let mut end = None;
    // Pointers must point strictly before the label that holds them.
    let mut limit = pos;
    loop {
        let len = *msg
            .get(pos)
            .ok_or("name runs past the end of the message")?;
        match len & 0xc0 {
            0x00 => {
                let len = usize::from(len);
                if len == 0 {
                    name.push(0);
                    if name.len() > MAX_NAME_LEN {
                        return Err(format!("name longer than {MAX_NAME_LEN} bytes"));
                    }
                    return Ok((name, end.unwrap_or(pos + 1)));
                }
                let label = msg
                    .get(pos + 1..pos + 1 + len)
                    .ok_or("label runs past the end of the message")?;
                name.push(len as u8);
                name.extend_from_slice(label);
                if name.len() > MAX_NAME_LEN {
                    return Err(format!("name longer than {MAX_NAME_LEN} bytes"));
                }
                pos += 1 + len;
            }
            0xc0 => {
                let low = *msg.get(pos + 1).ok_or("compression pointer cut short")?;
                let target = usize::from(u16::from_be_bytes([len & 0x3f, low]));
                if target >= limit {
                    return Err("compression pointer does not point backwards".into());
                }
                end.get_or_insert(pos + 2);
                limit = target;
                pos = target;
            }
            _ => return Err(format!("unsupported label type {:#04x}", len & 0xc0)),
        }
    }
}

/// Reads `count` questions starting right after the header. Returns them and the
/// offset just after the question section.
pub(crate) fn read_questions(msg: &[u8], count: u16) -> Result<(Vec<Question>, usize), String> {
    let mut pos = HEADER_LEN;
    let mut questions = Vec::with_capacity(usize::from(count.min(16)));
    for _ in 0..count {
        let (name, after) = read_name(msg, pos)?;
        let fixed = msg
            .get(after..after + 4)
            .ok_or("question type/class cut short")?;
        questions.push(Question {
            name,
            qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
            qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
        });
        pos = after + 4;
    }
    Ok((questions, pos))
}

/// What the forwarder needs to know about a query it relays.
#[derive(Debug, Clone)]
pub(crate) struct QueryInfo {
    pub header: Header,
    pub questions: Vec<Question>,
}

impl QueryInfo {
    pub fn parse(query: &[u8]) -> Result<Self, String> {
        let header = Header::parse(query).ok_or_else(|| {
            format!(
                "{} bytes is shorter than a DNS header ({HEADER_LEN})",
                query.len()
            )
        })?;
        if header.is_response() {
            return Err("message is a response, not a query".into());
        }
        let (questions, _) = read_questions(query, header.qdcount)
            .map_err(|e| format!("bad question section: {e}"))?;
        Ok(Self { header, questions })
    }

    /// Whether `response` answers this query sent with ID `id`: same ID, a response,
    /// same opcode, and the same questions. A response without a question section is
    /// accepted only with an error code that servers send without one (FORMERR,
    /// SERVFAIL, NOTIMP, REFUSED): some do for queries they cannot handle.
    pub fn accepts(&self, id: u16, response: &[u8]) -> bool {
        let Some(header) = Header::parse(response) else {
            return false;
        };
        if header.id != id || !header.is_response() || header.opcode() != self.header.opcode() {
            return false;
        }
        if header.qdcount == 0 && !self.questions.is_empty() {
            return matches!(
                header.rcode(),
                RCODE_FORMERR | RCODE_SERVFAIL | RCODE_NOTIMP | RCODE_REFUSED
            );
        }
        if header.qdcount != self.header.qdcount {
            return false;
        }
        match read_questions(response, header.qdcount) {
            Ok((questions, _)) => self
                .questions
                .iter()
                .zip(&questions)
                .all(|(a, b)| a.matches(b)),
            Err(_) => false,
        }
    }
}

/// Skips one resource record at `pos`; returns its type, its TTL field and the offset
/// after it.
fn skip_record(msg: &[u8], pos: usize) -> Result<(u16, u32, usize), String> {
    let (_, after) = read_name(msg, pos)?;
    let fixed = msg
        .get(after..after + 10)
        .ok_or("record header cut short")?;
    let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    let end = after + 10 + rdlen;
    if end > msg.len() {
        return Err("record data cut short".into());
    }
    Ok((rtype, ttl, end))
}

/// The TTL field of the query's OPT record (extended RCODE, version, DO and flags),
/// if it has one. A query whose records cannot be read is treated as having none.
fn query_opt_ttl(query: &[u8], header: &Header, mut pos: usize) -> Option<u32> {
    let records = u32::from(header.ancount) + u32::from(header.nscount);
    for _ in 0..records {
        pos = skip_record(query, pos).ok()?.2;
    }
    for _ in 0..header.arcount {
        let (rtype, ttl, end) = skip_record(query, pos).ok()?;
        if rtype == TYPE_OPT {
            return Some(ttl);
        }
        pos = end;
    }
    None
}

/// A minimal SERVFAIL answer to `query`: its ID, opcode, RD and CD bits and question
/// section echoed, RA set, no records, and an OPT record (payload 1232, version 0,
/// the query's DO bit) when the query had one (RFC 6891 6.1.1). `None` when `query`
/// is not a query whose header and question section can be read; a response is never
/// answered, so two resolvers cannot bounce errors at each other.
pub fn servfail_for(query: &[u8]) -> Option<Vec<u8>> {
    let header = Header::parse(query)?;
    if header.is_response() {
        return None;
    }
    let (questions, after) = read_questions(query, header.qdcount).ok()?;
    let opt_ttl = query_opt_ttl(query, &header, after);

    let flags = QR | (header.flags & (OPCODE_MASK | RD | CD)) | RA | u16::from(RCODE_SERVFAIL);
    let mut out = Vec::with_capacity(after + 11);
    out.extend_from_slice(&header.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&header.qdcount.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&u16::from(opt_ttl.is_some()).to_be_bytes());
    for question in &questions {
        question.encode(&mut out);
    }
    if let Some(ttl) = opt_ttl {
        // Extended RCODE 0, version 0; keep only the DO bit of the query's flags.
        let do_bit = ttl & 0x0000_8000;
        out.push(0); // root name
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        out.extend_from_slice(&do_bit.to_be_bytes());
        out.extend_from_slice(&[0, 0]); // no options
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], compressed_tail: bool) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(name);
        q.extend_from_slice(&[0, 1, 0, 1]);
        if compressed_tail {
            // A second question whose name is a pointer to the first.
            q[5] = 2;
            q.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1]);
        }
        q
    }

    #[test]
    fn reads_names_with_backward_pointers() {
        let q = query(b"\x03www\x04zone\x04test\x00", true);
        let (questions, end) = read_questions(&q, 2).unwrap();
        assert_eq!(end, q.len());
        assert_eq!(questions[0].name, questions[1].name);
        assert_eq!(questions[1].qtype, 28);
    }

    #[test]
    fn refuses_pointer_loops_and_forward_pointers() {
        let mut q = vec![0; 12];
        q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(read_name(&q, 12).is_err());
        let mut q = vec![0; 12];
        q.extend_from_slice(&[0xc0, 14, 0, 0, 1, 0, 1]);
        assert!(read_name(&q, 12).is_err());
    }

    #[test]
    fn refuses_overlong_names() {
        let mut name = Vec::new();
        for _ in 0..5 {
            name.push(63);
            name.extend_from_slice(&[b'a'; 63]);
        }
        name.push(0);
        assert!(read_name(&query(&name, false), 12).is_err());
    }

    #[test]
    fn matches_questions_case_insensitively() {
        let q = query(b"\x03www\x04zone\x04test\x00", false);
        let info = QueryInfo::parse(&q).unwrap();
        let mut r = query(b"\x03WwW\x04ZONE\x04test\x00", false);
        r[2] |= 0x80;
        assert!(info.accepts(0x1234, &r));
        assert!(!info.accepts(0x1235, &r));
        let mut other = query(b"\x03wwx\x04zone\x04test\x00", false);
        other[2] |= 0x80;
        assert!(!info.accepts(0x1234, &other));
    }
}
