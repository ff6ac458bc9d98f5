//! The junk generator: seeded random choices, and from them requests of every kind of
//! wrong (methods, paths, ids, queries, content types, bodies, tokens).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use user_api::domain::UserId;

use super::checks::{Req, Who, World};
use crate::helpers::raw_http::Body;
use crate::helpers::{keys, sign};

/// Default seed of the barrage (override with `ROBUSTNESS_SEED`, decimal or `0x` hex).
const DEFAULT_SEED: u64 = 0x005E_ED0F_C0FF_EE42;
/// The body limit of SPEC 6.
pub const LIMIT: usize = 64 * 1024;

/// The barrage's random choices, from a seeded generator so a failure can be replayed.
pub struct Rng(StdRng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.random()
    }

    fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n.max(1))
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u32) -> bool {
        self.0.random_ratio(percent, 100)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        items.choose(&mut self.0).expect("a choice among none")
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        self.0.fill(&mut out[..]);
        out
    }

    fn alnum(&mut self, n: usize) -> String {
        Alphanumeric.sample_string(&mut self.0, n)
    }
}

/// The barrage's seed: `ROBUSTNESS_SEED`, else the default.
pub fn seed() -> u64 {
    match std::env::var("ROBUSTNESS_SEED") {
        Ok(s) => {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            }
            .unwrap_or_else(|_| panic!("ROBUSTNESS_SEED={s:?} is not a u64"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "get", "FOO", "PROPFIND",
    "M-SEARCH",
];

const CONTENT_TYPES: &[&[u8]] = &[
    b"application/json",
    b"application/json; charset=utf-8",
    b"APPLICATION/JSON",
    b"application/merge-patch+json",
    b"application/json; charset=latin1; boundary=\"x\"",
    b" application/json ",
    b"text/plain",
    b"text/json",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=xyz",
    b"application/xml",
    b"",
    b";",
    b"application/jsonx",
    b"application/json\xff\xfe",
    b"*/*",
];

const FIELDS: &[&str] = &[
    "first_name",
    "last_name",
    "name",
    "email",
    "phone",
    "address",
    "date_of_birth",
    "user_id",
];

/// JSON values (as text) that are the wrong type for every field.
const WRONG_TYPES: &[&str] = &[
    "0",
    "-1",
    "1.5",
    "true",
    "false",
    "[]",
    "{}",
    "[\"x\"]",
    "{\"a\":1}",
    "[[[]]]",
    "1e308",
];

/// Numbers that stress parsers and stores.
const HUGE_NUMBERS: &[&str] = &[
    "1e400",
    "-1e400",
    "123456789012345678901234567890",
    "18446744073709551616",
    "-9223372036854775809",
    "1e308",
    "1.7976931348623157e308",
    "5e-324",
    "1e-400",
    "-0",
    "-0.0",
    "0.1e-999999",
    "1E+2",
    "NaN",
    "Infinity",
    "-Infinity",
    "0x10",
    "01",
    "1.",
    ".5",
];

/// String literals (JSON text, some invalid) with NULs, escapes and surrogates.
const NASTY_STRINGS: &[&[u8]] = &[
    br#""\u0000""#,
    br#""a\u0000b""#,
    br#""\ud800""#,
    br#""\udfff""#,
    br#""\ud800\u0041""#,
    br#""\udbff\udfff""#,
    br#""\ud83d\ude00""#,
    br#""\\u0000""#,
    br#""\"\\\/\b\f\n\r\t""#,
    b"\"\x01\x02\x1f\"",
    b"\"\x7f\"",
    br#""\u202e\u200b\ufeff""#,
    br#""'; DROP TABLE profiles; --""#,
    br#""<script>alert(1)</script>""#,
    br#""%00%ff%2e%2e""#,
    br#""\x41""#,
    br#""\u12""#,
    br#""\""#,
    "\"日本語🎌\"".as_bytes(),
    br#""""#,
    b"\"\xff\xfe\"",
    b"\"\xed\xa0\x80\"",
    b"\"\xc0\xaf\"",
    b"\"\xf4\x90\x80\x80\"",
];

pub struct Gen<'a> {
    pub rng: Rng,
    pub w: &'a World,
}

impl Gen<'_> {
    fn who(&mut self) -> Who {
        match self.rng.below(100) {
            0..=29 => Who::Admin,
            30..=49 => Who::Other,
            50..=61 => Who::Player,
            62..=71 => Who::Fresh,
            72..=87 => Who::Junk,
            _ => Who::Anonymous,
        }
    }

    /// A well-formed id this caller might aim at, and whether it is the victim's. Admins
    /// never aim at the victim (they would be allowed to); everybody else may try.
    fn some_id(&mut self, who: Who) -> (String, bool) {
        let w = self.w;
        let choices: Vec<UserId> = match who {
            Who::Admin => vec![w.player, w.other, w.fresh, UserId::random()],
            Who::Other => vec![w.other, w.victim, w.player, UserId::random()],
            Who::Player => vec![w.player, w.victim, w.other],
            Who::Fresh => vec![w.fresh, w.victim, UserId::random()],
            Who::Junk | Who::Anonymous => vec![w.victim, w.player, w.other, UserId::random()],
        };
        let id = *self.rng.pick(&choices);
        (id.to_string(), id == w.victim)
    }

    /// A path segment in place of `{user_id}`: (segment, aims at the victim, wire junk).
    fn id_segment(&mut self, who: Who) -> (String, bool, bool) {
        let (id, victim) = self.some_id(who);
        let variant = self.rng.below(40);
        // Only the spellings of the id (0..=22) aim at its owner; the rest replace it.
        let victim = victim && variant <= 22;
        let seg = match variant {
            0..=13 => id,
            14 => id.to_uppercase(),
            15 => id.replace('-', ""),
            16 => format!("%7B{id}%7D"),
            17 => format!("urn:uuid:{id}"),
            18 => id.bytes().map(|b| format!("%{b:02X}")).collect(),
            19 => format!("{id}%00"),
            20 => format!("{id}%20"),
            21 => format!("+{id}"),
            22 => format!("{id};x=1"),
            23 => "00000000-0000-0000-0000-000000000000".into(),
            24 => "ffffffff-ffff-ffff-ffff-ffffffffffff".into(),
            25 => {
                let (seg, wire) = self.rng.pick(NASTY_SEGMENTS).to_owned();
                return (seg.to_owned(), false, wire);
            }
            26 => "a".repeat(10 * 1024),
            27 => "%41".repeat(3500),
            28 => self.rng.alnum(36),
            29 => "%FF".into(),
            30 => "%00".into(),
            31 => "..".into(),
            32 => "%2e%2e".into(),
            33 => "%ED%A0%80".into(),
            34 => "%E6%97%A5%E6%9C%AC".into(),
            35 => "me".into(),
            36 => "batch".into(),
            37 => "%C0%AF".into(),
            38 => "%ZZ".into(),
            _ => "%".into(),
        };
        (seg, victim, false)
    }

    fn path(&mut self, template: &str, who: Who) -> (String, bool, bool) {
        let mut victim = false;
        let mut wire = false;
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            let end = rest[start..]
                .find('}')
                .map_or(rest.len(), |e| start + e + 1);
            out.push_str(&rest[..start]);
            let (seg, v, wj) = self.id_segment(who);
            out.push_str(&seg);
            victim |= v;
            wire |= wj;
            rest = &rest[end..];
        }
        out.push_str(rest);
        (out, victim, wire)
    }

    fn query(&mut self) -> String {
        let victim = self.w.victim;
        match self.rng.below(12) {
            0 => "?".into(),
            1 => "?a=1&a=2&&=&==".into(),
            2 => format!("?user_id={victim}"),
            3 => "?%FF=%00&%ZZ".into(),
            4 => format!("?q={}", "x".repeat(4000)),
            5 => "?role=admin&sub=00000000-0000-0000-0000-000000000000".into(),
            6 => "?x[]=1&x[]=2&__proto__[admin]=true".into(),
            7 => "?cached=true&fields=*&limit=99999999999999999999".into(),
            8 => "?json=%7B%22a%22%3A1%7D".into(),
            9 => "?%E6%97%A5=%F0%9F%98%80".into(),
            10 => format!("?id={victim}&user_id=../../{victim}"),
            _ => format!("?{}", self.rng.alnum(20)),
        }
    }

    fn field_value(&mut self, who: Who, field: &str) -> Value {
        if self.rng.chance(10) {
            return Value::Null;
        }
        match field {
            "email" => json!(match self.rng.below(8) {
                0 => "not-an-email".to_owned(),
                1 => "a@b".to_owned(),
                2 => "太郎@例え.jp".to_owned(),
                3 => String::new(),
                4 => format!("{}@{}.com", "x".repeat(64), "y".repeat(63)),
                5 => "PLAYER@EXAMPLE.COM".to_owned(),
                _ => format!("u{}@example.com", self.rng.alnum(10).to_lowercase()),
            }),
            "date_of_birth" => json!(*self.rng.pick(&[
                "1990-01-01",
                "2000-02-29",
                "1900-02-29",
                "0000-01-01",
                "9999-12-31",
                "1990-1-1",
                "2999-01-01",
                "",
                "1990-01-01T00:00:00Z",
                "１９９０-０１-０１",
                "-001-01-01",
                "1990-01-01\u{0}",
            ])),
            "user_id" => json!(self.some_id(who).0),
            _ => json!(match self.rng.below(10) {
                0 => "Taro".to_owned(),
                1 => "山田 太郎".to_owned(),
                2 => "Robert'); DROP TABLE profiles;--".to_owned(),
                3 => "😀\u{202e}\u{200b}".to_owned(),
                4 => String::new(),
                5 => "a".repeat(255),
                6 => "界".repeat(256),
                7 => "x".repeat(1001),
                8 => "<b>\"x\"</b>\\".to_owned(),
                _ => self.rng.alnum(12),
            }),
        }
    }

    fn profile_object(&mut self, who: Who) -> Value {
        let mut o = serde_json::Map::new();
        for f in FIELDS {
            if self.rng.chance(40) {
                o.insert((*f).to_owned(), self.field_value(who, f));
            }
        }
        if self.rng.chance(10) {
            let extra = *self.rng.pick(&[
                "last_login",
                "created_at",
                "cached_at",
                "is_admin",
                "__proto__",
                "",
            ]);
            o.insert(extra.to_owned(), json!("2020-01-01T00:00:00Z"));
        }
        Value::Object(o)
    }

    fn settings_object(&mut self) -> Value {
        let depth = self.rng.below(6);
        let mut v = match self.rng.below(5) {
            0 => json!(self.rng.alnum(8)),
            1 => json!(self.rng.next() as i64),
            2 => json!([1, "two", null, {"three": 3.5}]),
            3 => json!(f64::MAX),
            _ => json!({"k": true}),
        };
        for _ in 0..depth {
            v = json!({ self.rng.alnum(4): v });
        }
        json!({"theme": "dark", "lang": "日本語", "v": v})
    }

    fn batch_body(&mut self, who: Who) -> Vec<u8> {
        let n = *self.rng.pick(&[0usize, 1, 3, 10, 100, 101, 150]);
        let ids: Vec<Value> = (0..n)
            .map(|_| match self.rng.below(10) {
                0 => json!(42),
                1 => json!(null),
                2 => json!("not-a-uuid"),
                3 => json!("a".repeat(300)),
                _ => json!(self.some_id(who).0),
            })
            .collect();
        let v = match self.rng.below(5) {
            0 | 1 => json!(ids),
            2 => json!({"user_ids": ids}),
            3 => json!({"user_ids": ids, "extra": 1}),
            _ => json!({"ids": ids}),
        };
        serde_json::to_vec(&v).unwrap()
    }

    fn deep(&mut self) -> Vec<u8> {
        let n = *self.rng.pick(&[100usize, 126, 127, 128, 129, 200, 10_000]);
        match self.rng.below(5) {
            0 => "[".repeat(n).into_bytes(),
            1 => "{\"a\":".repeat(n).into_bytes(),
            2 => format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes(),
            3 => format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n)).into_bytes(),
            _ => format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n)).into_bytes(),
        }
    }

    fn sized(&mut self) -> Vec<u8> {
        let size = *self.rng.pick(&[
            LIMIT - 1,
            LIMIT,
            LIMIT + 1,
            LIMIT + 1000,
            16 * 1024,
            16 * 1024 + 1,
            200_000,
        ]);
        match self.rng.below(3) {
            0 => padded_object(size),
            1 => {
                let mut b = b"{}".to_vec();
                b.resize(size, b' ');
                b
            }
            _ => self.rng.bytes(size),
        }
    }

    fn body(&mut self, who: Who) -> Vec<u8> {
        match self.rng.below(20) {
            0 => Vec::new(),
            1 => {
                let n = self.rng.below(2000);
                self.rng.bytes(n)
            }
            2 => {
                let full = serde_json::to_vec(&self.profile_object(who)).unwrap();
                let cut = 1 + self.rng.below(full.len().max(2) - 1);
                full[..cut.min(full.len())].to_vec()
            }
            3 => self.deep(),
            4 => {
                let n = *self.rng.pick(HUGE_NUMBERS);
                let f = *self.rng.pick(FIELDS);
                match self.rng.below(3) {
                    0 => format!("{{\"{f}\":{n}}}"),
                    1 => format!("{{\"n\":{n},\"m\":[{n},{n}]}}"),
                    _ => format!("[{n}]"),
                }
                .into_bytes()
            }
            5 => {
                let f = *self.rng.pick(FIELDS);
                let (a, b) = (self.field_value(who, f), self.field_value(who, f));
                format!("{{\"{f}\":{a},\"{f}\":{b},\"user_ids\":[],\"user_ids\":[]}}").into_bytes()
            }
            6 => {
                let mut parts = Vec::new();
                for f in FIELDS {
                    if self.rng.chance(50) {
                        parts.push(format!("\"{f}\":{}", self.rng.pick(WRONG_TYPES)));
                    }
                }
                format!("{{{}}}", parts.join(",")).into_bytes()
            }
            7 => {
                let inner = serde_json::to_string(&self.profile_object(who)).unwrap();
                match self.rng.below(3) {
                    0 => format!("[{inner}]"),
                    1 => format!("[{inner},{inner}]"),
                    _ => "[\"name\",\"x\"]".to_owned(),
                }
                .into_bytes()
            }
            8 => {
                let f = *self.rng.pick(FIELDS);
                let s = *self.rng.pick(NASTY_STRINGS);
                let mut b = format!("{{\"{f}\":").into_bytes();
                b.extend_from_slice(s);
                if self.rng.chance(30) {
                    b.extend_from_slice(b",");
                    b.extend_from_slice(s);
                    b.extend_from_slice(b":1");
                }
                b.push(b'}');
                b
            }
            9 => self.sized(),
            10..=12 => serde_json::to_vec(&self.profile_object(who)).unwrap(),
            13 => serde_json::to_vec(&self.settings_object()).unwrap(),
            14 => self.batch_body(who),
            15 => (*self.rng.pick(&[
                "null",
                "true",
                "0",
                "\"str\"",
                "[]",
                "{}",
                "[{}]",
                "{\"\":null}",
            ]))
            .as_bytes()
            .to_vec(),
            16 => (*self.rng.pick(&[
                "\u{feff}{}",
                "{\"name\":\"x\",}",
                "{'name':'x'}",
                "{\"name\":\"x\"} // c",
                "/* c */ {}",
                "{\"name\":NaN}",
                "{\"name\" \"x\"}",
                "{}{}",
                "{\"name\":\"x\"}\u{0}",
                "\u{0}",
            ]))
            .as_bytes()
            .to_vec(),
            17 => {
                let f = *self.rng.pick(&["name", "address", "phone", "first_name"]);
                let n = *self.rng.pick(&[255usize, 256, 1000, 1001, 20_000]);
                format!("{{\"{f}\":\"{}\"}}", "é".repeat(n)).into_bytes()
            }
            18 => {
                let v = json!({"date_of_birth": self.field_value(who, "date_of_birth"),
                               "email": self.field_value(who, "email")});
                serde_json::to_vec(&v).unwrap()
            }
            _ => {
                let n = self.rng.below(30);
                self.rng.alnum(n).into_bytes()
            }
        }
    }

    pub fn request(&mut self) -> Req {
        let who = self.who();
        let w = self.w;
        let extra: &[&str] = &[
            "/",
            "/api",
            "/api/",
            "/api/profiles/",
            "/api/profiles/{user_id}/",
            "/api/profiles/{user_id}/unknown",
            "/api/profiles/{user_id}/settings/x",
            "/api//profiles/{user_id}",
            "/API/PROFILES/{user_id}",
            "/api/profiles/{user_id}/../../admin/cache/metrics",
            "/api/profiles/./me",
            "/api/admin/cache/invalidate/",
            "/profile/",
            "/health/",
            "/docs",
            "/docs/",
            "/openapi.json",
            "/nope%00",
        ];
        let (template, documented): (String, Vec<String>) = if self.rng.chance(85) {
            self.rng.pick(&w.routes).clone()
        } else {
            ((*self.rng.pick(extra)).to_owned(), Vec::new())
        };
        let method = if !documented.is_empty() && self.rng.chance(80) {
            self.rng.pick(&documented).clone()
        } else {
            (*self.rng.pick(METHODS)).to_owned()
        };
        let (mut target, at_victim, wire_junk) = self.path(&template, who);
        if self.rng.chance(20) {
            target.push_str(&self.query());
        }
        let mut req = Req::new(&method, target, who);
        req.tag.at_victim = at_victim;
        req.tag.wire_junk = wire_junk;
        match who {
            Who::Junk => {
                let t = self.rng.pick(&w.junk_tokens).clone();
                req = req.header("Authorization", t);
            }
            Who::Anonymous => {}
            _ => req = req.auth(w.token(who).unwrap()),
        }
        let wants_body = matches!(method.as_str(), "POST" | "PUT" | "PATCH") || self.rng.chance(15);
        if wants_body {
            if !self.rng.chance(8) {
                let ct = if self.rng.chance(75) {
                    CONTENT_TYPES[self.rng.below(6)]
                } else {
                    *self.rng.pick(CONTENT_TYPES)
                };
                req = req.header("Content-Type", ct);
            }
            let body = self.body(who);
            req.body = if self.rng.chance(15) {
                Body::Chunked(body)
            } else {
                Body::Sized(body)
            };
        }
        if self.rng.chance(15) {
            let (k, v): (&str, &[u8]) = *self.rng.pick(&[
                ("Accept", b"application/xml" as &[u8]),
                ("Accept", b"*/*;q=0.1, text/html"),
                ("Accept-Encoding", b"gzip, br, zstd"),
                ("Content-Encoding", b"gzip"),
                ("X-Forwarded-For", b"not-an-ip, 1.2.3.4"),
                ("X-Forwarded-For", b"::ffff:10.0.0.1"),
                ("X-Request-Id", b"\xff\xfe junk id"),
                ("Cookie", b"session=abc; role=admin"),
                ("Origin", b"http://evil.example"),
                ("Expect", b"100-continue"),
                ("X-HTTP-Method-Override", b"DELETE"),
                ("Range", b"bytes=0-10"),
                ("User-Agent", "日本語 agent".as_bytes()),
            ]);
            req = req.header(k, v);
        }
        req
    }
}

/// `{"pad":"aaa…"}` of exactly `size` bytes.
pub fn padded_object(size: usize) -> Vec<u8> {
    let mut b = b"{\"pad\":\"".to_vec();
    b.resize(size - 2, b'a');
    b.extend_from_slice(b"\"}");
    b
}

/// Path segments that are not ids at all: (segment, breaks the HTTP request line).
const NASTY_SEGMENTS: &[(&str, bool)] = &[
    ("", false),
    (".", false),
    ("%2e", false),
    ("%2F", false),
    ("..%2F..%2Fadmin", false),
    ("%5C..%5C", false),
    ("'%3B%20DROP%20TABLE%20profiles%3B--", false),
    ("%27%20OR%201%3D1--", false),
    ("%0D%0ASet-Cookie:%20x=1", false),
    ("%E2%80%AE", false),
    ("%F0%9F%98%80", false),
    ("%C3%28", false),
    ("%F8%88%80%80%80", false),
    ("%E2%82", false),
    ("%25", false),
    ("%%%", false),
    ("1", false),
    ("-1", false),
    ("0x10", false),
    ("null", false),
    ("undefined", false),
    ("*", false),
    ("$(reboot)", false),
    ("{user_id}", false),
    ("日本", true),
    ("\u{0}", true),
    ("a b", true),
];

/// Tokens that must all be refused (401), several claiming to be the victim or an admin.
pub fn junk_tokens(victim: UserId, valid: &str) -> Vec<Vec<u8>> {
    let now = chrono::Utc::now().timestamp();
    let segment = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let admin_claims = json!({"sub": victim.to_string(), "role": "admin", "exp": now + 3600});
    let none = format!(
        "{}.{}.",
        segment(&json!({"alg": "none", "typ": "JWT"})),
        segment(&admin_claims)
    );
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &admin_claims,
        &jsonwebtoken::EncodingKey::from_secret(keys().public_pem.as_bytes()),
    )
    .expect("hs256 token");
    // A valid signature over other claims: the payload swapped for an admin one.
    let parts: Vec<&str> = valid.split('.').collect();
    let swapped = format!("{}.{}.{}", parts[0], segment(&admin_claims), parts[2]);
    // One flipped character in the middle of the signature.
    let mut flipped = valid.to_owned().into_bytes();
    let mid = valid.len() - parts[2].len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let signed = |claims: Value| sign(&claims);
    let v = victim.to_string();
    let mut out: Vec<Vec<u8>> = [
        String::new(),
        "Bearer".into(),
        "Bearer ".into(),
        "Bearer    \t ".into(),
        "Basic dXNlcjpwYXNz".into(),
        format!("Token {valid}"),
        format!("Bearer {none}"),
        format!("Bearer {hs256}"),
        format!("Bearer {swapped}"),
        format!("Bearer {}", String::from_utf8(flipped).unwrap()),
        format!("Bearer {valid}x"),
        format!("Bearer {valid} {valid}"),
        format!("Bearer {valid},Bearer {valid}"),
        "Bearer abc.def.ghi".into(),
        "Bearer null".into(),
        "Bearer ../../../../etc/passwd".into(),
        "Bearer %00%ff".into(),
        format!("Bearer {}", "A".repeat(9_000)),
        format!(
            "Bearer {}.{}.{}",
            "e".repeat(6_000),
            "e".repeat(6_000),
            "e".repeat(5_000)
        ),
        format!(
            "Bearer {}",
            signed(json!({"sub": v, "role": "admin", "exp": now - 7200, "iat": now - 9000}))
        ),
        format!(
            "Bearer {}",
            signed(json!({"sub": v, "role": "admin", "exp": now + 3600, "token_type": "refresh"}))
        ),
        format!("Bearer {}", signed(json!({"sub": v, "role": "admin"}))),
        format!(
            "Bearer {}",
            signed(json!({"sub": "admin", "role": "admin", "exp": now + 3600}))
        ),
        format!(
            "Bearer {}",
            signed(json!({"sub": 12345, "role": "admin", "exp": now + 3600}))
        ),
        format!(
            "Bearer {}",
            signed(json!({"sub": v.to_uppercase() + " ", "role": "admin", "exp": now + 3600}))
        ),
        format!(
            "Bearer {}",
            signed(json!({"sub": v, "role": "admin", "exp": now + 3600, "iat": now + 86_400}))
        ),
        format!(
            "Bearer {}",
            signed(json!({"sub": v, "role": "admin", "exp": "tomorrow"}))
        ),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    out.push(b"Bearer \xff\xfe\xfd".to_vec());
    out.push("Bearer 日本語".as_bytes().to_vec());
    out
}
