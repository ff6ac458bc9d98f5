//! Fake profiles for `user-api seed --count N` (demos and benchmarks).
//!
//! Every address, phone number and domain is of a kind reserved for fiction or
//! documentation (`example.*` domains, 555-01xx numbers), so seeded data cannot reach anyone.

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use rand::RngExt;
use rand::seq::IndexedRandom;

use crate::db::{DbError, ProfileRepo};
use crate::domain::{Fake, FakeSource, FieldSpec, NewProfile, Profile, ProfileId, UserId};

/// Profiles generated and inserted per round trip: big enough to amortize the round trip,
/// small enough to keep memory flat for millions of rows.
const SEED_CHUNK: usize = 5_000;

/// Japanese family names: (written form, romanization for the e-mail address).
const JA_LAST: &[(&str, &str)] = &[
    ("山田", "yamada"),
    ("佐藤", "sato"),
    ("鈴木", "suzuki"),
    ("高橋", "takahashi"),
    ("田中", "tanaka"),
    ("伊藤", "ito"),
    ("渡辺", "watanabe"),
    ("中村", "nakamura"),
    ("小林", "kobayashi"),
    ("加藤", "kato"),
    ("吉田", "yoshida"),
    ("山本", "yamamoto"),
    ("松本", "matsumoto"),
    ("井上", "inoue"),
    ("木村", "kimura"),
    ("林", "hayashi"),
    ("清水", "shimizu"),
    ("山口", "yamaguchi"),
    ("斎藤", "saito"),
    ("森", "mori"),
    ("池田", "ikeda"),
    ("橋本", "hashimoto"),
    ("石川", "ishikawa"),
    ("前田", "maeda"),
];

/// Japanese given names in kanji, hiragana or katakana, with romanizations.
const JA_FIRST: &[(&str, &str)] = &[
    ("太郎", "taro"),
    ("花子", "hanako"),
    ("翔太", "shota"),
    ("陽菜", "hina"),
    ("さくら", "sakura"),
    ("健一", "kenichi"),
    ("美咲", "misaki"),
    ("ひなた", "hinata"),
    ("大輔", "daisuke"),
    ("結衣", "yui"),
    ("蓮", "ren"),
    ("あおい", "aoi"),
    ("悠真", "yuma"),
    ("彩", "aya"),
    ("拓海", "takumi"),
    ("ゆうき", "yuki"),
    ("ケンタ", "kenta"),
    ("恵美", "emi"),
    ("直樹", "naoki"),
    ("真由美", "mayumi"),
];

/// Latin-script given names (some with diacritics), with ASCII forms for e-mail.
const LATIN_FIRST: &[(&str, &str)] = &[
    ("Emma", "emma"),
    ("Liam", "liam"),
    ("Olivia", "olivia"),
    ("Noah", "noah"),
    ("Sofía", "sofia"),
    ("Mateo", "mateo"),
    ("Chloé", "chloe"),
    ("Lukas", "lukas"),
    ("Ingrid", "ingrid"),
    ("João", "joao"),
    ("Amelia", "amelia"),
    ("Oliver", "oliver"),
    ("Zoë", "zoe"),
    ("Aarav", "aarav"),
    ("Léa", "lea"),
    ("Jan", "jan"),
];

/// Latin-script family names, including an apostrophe and diacritics on purpose.
const LATIN_LAST: &[(&str, &str)] = &[
    ("Smith", "smith"),
    ("Johnson", "johnson"),
    ("García", "garcia"),
    ("Müller", "mueller"),
    ("O'Brien", "obrien"),
    ("Dubois", "dubois"),
    ("Rossi", "rossi"),
    ("Kowalski", "kowalski"),
    ("Nguyen", "nguyen"),
    ("Andersson", "andersson"),
    ("Silva", "silva"),
    ("Novák", "novak"),
    ("Brown", "brown"),
    ("Van der Berg", "vanderberg"),
];

const JA_PLACES: &[&str] = &[
    "東京都渋谷区神南",
    "東京都新宿区西新宿",
    "東京都世田谷区三軒茶屋",
    "大阪府大阪市北区梅田",
    "京都府京都市中京区河原町",
    "愛知県名古屋市中区栄",
    "福岡県福岡市博多区博多駅前",
    "北海道札幌市中央区大通西",
    "神奈川県横浜市西区みなとみらい",
    "宮城県仙台市青葉区一番町",
];

const LATIN_STREETS: &[&str] = &[
    "Maple Street",
    "Oak Avenue",
    "Rue de la Paix",
    "Hauptstraße",
    "Via Roma",
    "High Street",
    "Elm Road",
    "Calle Mayor",
];

const LATIN_CITIES: &[&str] = &[
    "Springfield, IL 62704, USA",
    "London SW1A 1AA, UK",
    "75002 Paris, France",
    "10115 Berlin, Germany",
    "00184 Roma, Italy",
    "28013 Madrid, Spain",
    "Toronto, ON M5H 2N2, Canada",
];

const DOMAINS: &[&str] = &["example.com", "example.jp", "example.org", "example.net"];

/// `n` realistic fake profiles with unique ids and e-mail addresses; about a third logged
/// in within the last 7 days.
pub fn fake_profiles(n: usize) -> Vec<Profile> {
    let mut rng = rand::rng();
    let now = Utc::now().trunc_subsecs(6);
    (0..n).map(|i| fake_profile(&mut rng, now, i)).collect()
}

fn pick<'a, T>(rng: &mut impl rand::Rng, items: &'a [T], fallback: &'a T) -> &'a T {
    items.choose(rng).unwrap_or(fallback)
}

/// One made-up person, from which every field of their profile is drawn ([`Fake`]).
struct Persona<'r, R> {
    rng: &'r mut R,
    user_id: UserId,
    /// Index in the run: keeps e-mail addresses unique within it.
    index: usize,
    japanese: bool,
    first: (&'static str, &'static str),
    last: (&'static str, &'static str),
}

impl<R: rand::Rng> Persona<'_, R> {
    fn phone(&mut self) -> String {
        let rng = &mut *self.rng;
        if self.japanese {
            format!(
                "0{}0-{:04}-{:04}",
                rng.random_range(7..=9),
                rng.random_range(0..10_000),
                rng.random_range(0..10_000)
            )
        } else {
            // 555-0100..0199 is reserved for fiction.
            format!(
                "+1-{}-555-01{:02}",
                rng.random_range(201..990),
                rng.random_range(0..100)
            )
        }
    }

    fn address(&mut self) -> String {
        let rng = &mut *self.rng;
        if self.japanese {
            format!(
                "{}{}-{}-{}",
                pick(rng, JA_PLACES, &"東京都千代田区丸の内"),
                rng.random_range(1..=5),
                rng.random_range(1..=30),
                rng.random_range(1..=20)
            )
        } else {
            format!(
                "{} {}, {}",
                rng.random_range(1..400),
                pick(rng, LATIN_STREETS, &"Main Street"),
                pick(rng, LATIN_CITIES, &"Springfield, IL 62704, USA")
            )
        }
    }

    fn email(&mut self) -> String {
        // The index keeps addresses unique within a run; the id fragment across runs.
        let simple = self.user_id.as_uuid().simple().to_string();
        format!(
            "{}.{}.{}.{}@{}",
            self.first.1,
            self.last.1,
            self.index,
            simple.get(..8).unwrap_or(&simple),
            pick(self.rng, DOMAINS, &"example.com")
        )
    }

    fn past_date(&mut self) -> String {
        let rng = &mut *self.rng;
        format!(
            "{:04}-{:02}-{:02}",
            rng.random_range(1950..=2007),
            rng.random_range(1..=12),
            rng.random_range(1..=28)
        )
    }

    fn word(&mut self) -> String {
        let syllables = ["ka", "ri", "mo", "to", "na", "se", "lu", "vi", "ra", "po"];
        let n = self.rng.random_range(2..=4);
        (0..n).map(|_| *pick(self.rng, &syllables, &"ka")).collect()
    }

    /// True with probability `p`.
    fn odds(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }
}

impl<R: rand::Rng> FakeSource for Persona<'_, R> {
    fn fake(&mut self, spec: &'static FieldSpec) -> Option<String> {
        let (first, last) = (self.first.0, self.last.0);
        match spec.fake {
            Fake::GivenName => Some(first.to_owned()),
            Fake::FamilyName => Some(last.to_owned()),
            // Family name first, no space, as written in Japanese.
            Fake::FullName if self.japanese => Some(format!("{last}{first}")),
            Fake::FullName => Some(format!("{first} {last}")),
            // Some fields are left empty, as real profiles leave them.
            Fake::Email => (!self.odds(0.05)).then(|| self.email()),
            Fake::Phone => (!self.odds(0.1)).then(|| self.phone()),
            Fake::Address => (!self.odds(0.15)).then(|| self.address()),
            Fake::PastDate => (!self.odds(0.1)).then(|| self.past_date()),
            Fake::Word => (!self.odds(0.1)).then(|| self.word()),
        }
    }
}

fn fake_profile(rng: &mut impl rand::Rng, now: DateTime<Utc>, i: usize) -> Profile {
    let user_id = UserId::random();
    let japanese = rng.random_bool(0.5);
    let (first, last) = if japanese {
        (
            *pick(rng, JA_FIRST, &("太郎", "taro")),
            *pick(rng, JA_LAST, &("山田", "yamada")),
        )
    } else {
        (
            *pick(rng, LATIN_FIRST, &("Emma", "emma")),
            *pick(rng, LATIN_LAST, &("Smith", "smith")),
        )
    };
    let fields = NewProfile::fake(&mut Persona {
        rng: &mut *rng,
        user_id,
        index: i,
        japanese,
        first,
        last,
    });

    let created_at = now - TimeDelta::seconds(rng.random_range(30 * 86_400..3 * 365 * 86_400));
    let age = (now - created_at).num_seconds().max(1);
    let updated_at = created_at + TimeDelta::seconds(rng.random_range(0..age));
    let last_login = match rng.random_range(0..3) {
        // Within the last 7 days (a minute of margin so prewarm still sees it).
        0 => Some(now - TimeDelta::seconds(rng.random_range(60..7 * 86_400 - 60))),
        // Between creation and 8 days ago.
        1 => {
            let old_age = (now - created_at).num_seconds() - 8 * 86_400;
            Some(now - TimeDelta::seconds(8 * 86_400 + rng.random_range(0..old_age.max(1))))
        }
        _ => None,
    };

    Profile {
        last_login,
        updated_at,
        ..Profile::from_new(ProfileId::random(), user_id, fields, created_at)
    }
}

/// Inserts `count` fake profiles in chunks; returns how many rows were inserted.
pub async fn seed(repo: &dyn ProfileRepo, count: usize) -> Result<u64, DbError> {
    let mut inserted = 0;
    let mut remaining = count;
    while remaining > 0 {
        let n = remaining.min(SEED_CHUNK);
        // Generated per chunk (and the rng dropped before awaiting) so the future stays Send.
        let batch = fake_profiles(n);
        inserted += repo.insert_many(&batch).await?;
        remaining -= n;
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn profiles_are_plausible_and_unique() {
        let now = Utc::now();
        let ps = fake_profiles(3_000);
        assert_eq!(ps.len(), 3_000);
        let emails: HashSet<String> = ps
            .iter()
            .filter_map(|p| p.email.as_ref().map(|e| e.as_str().to_lowercase()))
            .collect();
        assert_eq!(
            emails.len(),
            ps.iter().filter(|p| p.email.is_some()).count()
        );
        let ids: HashSet<UserId> = ps.iter().map(|p| p.user_id).collect();
        assert_eq!(ids.len(), ps.len());
        let recent = ps
            .iter()
            .filter(|p| p.last_login.is_some_and(|t| t > now - TimeDelta::days(7)))
            .count();
        assert!((800..1_200).contains(&recent), "{recent} recent logins");
        assert!(
            ps.iter()
                .any(|p| p.name.as_deref().is_some_and(|n| !n.is_ascii()))
        );
        assert!(
            ps.iter()
                .any(|p| p.name.as_deref().is_some_and(|n| n.is_ascii()))
        );
        // Every field of the list is filled in some profile.
        let json: Vec<serde_json::Value> = ps.iter().map(|p| serde_json::json!(p)).collect();
        for f in crate::domain::FIELDS {
            assert!(
                json.iter().any(|p| !p[f.name].is_null()),
                "{} never seeded",
                f.name
            );
        }
        for p in &ps {
            assert!(p.created_at <= p.updated_at && p.updated_at <= now);
            if let Some(t) = p.last_login {
                assert!(t >= p.created_at && t <= now);
            }
        }
    }
}
