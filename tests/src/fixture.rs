//! A seeded audience: installations written straight into an app's table,
//! with a known share of opted-out devices and of tokens the providers reject.

use crate::TestEnv;

/// Installation `n` of a seeded app: every other one iOS; every 97th has a
/// token the providers reject; every 50th opted out.
pub fn token(n: i64) -> String {
    let invalid = n % 97 == 0;
    match (n % 2 == 0, invalid) {
        (true, false) => format!("a{:063x}", n),
        (true, true) => format!("0bad{:060x}", n),
        (false, false) => format!("fcm-{n}"),
        (false, true) => format!("bad-{n}"),
    }
}

pub fn opted_in(n: i64) -> bool {
    n % 50 != 0
}

pub fn deliverable(n: i64) -> bool {
    opted_in(n) && n % 97 != 0
}

/// Writes `count` installations straight into the app's table (a fixture:
/// 100,000 PUTs would test the gateway, not campaigns), following [`token`].
pub async fn seed(env: &TestEnv, app_id: &str, count: i64) {
    sqlx::query(
        "INSERT INTO installations (app_id, install_id, custom_id, platform, token, opted_in)
         SELECT $1::uuid, 'i-' || lpad(n::text, 7, '0'), 'user-' || (n / 2),
                CASE WHEN n % 2 = 0 THEN 'ios' ELSE 'android' END,
                CASE WHEN n % 2 = 0 AND n % 97 <> 0 THEN 'a' || lpad(to_hex(n), 63, '0')
                     WHEN n % 2 = 0 THEN '0bad' || lpad(to_hex(n), 60, '0')
                     WHEN n % 97 <> 0 THEN 'fcm-' || n
                     ELSE 'bad-' || n END,
                n % 50 <> 0
         FROM generate_series(1, $2::int8) AS n",
    )
    .bind(app_id)
    .bind(count)
    .execute(&env.db)
    .await
    .expect("seeding installations");
}
