//! Durations as people write and read them: one parser for every flag,
//! setting and variable, one formatter for every line that shows one, so
//! that what the CLI prints can be typed back (`1.5s`, `100ms`, `2m30s`).

use std::time::Duration;

/// What a valid duration looks like, for error messages.
const EXAMPLES: &str = "expected a number and a unit, e.g. 100ms, 1.5s, 2m";

/// The units a number may carry, with their length in nanoseconds.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

/// Parses `100ms`, `1.5s`, `2m30s`, `1h 30m`: numbers (with a fraction if
/// wanted), each followed by a unit (`ns`, `us`, `ms`, `s`, `m`, `h`, `d`),
/// the parts added up. A bare number is refused: `--freq 100` could mean
/// 100 ms or 100 s, and a guess would be wrong for somebody; only `0` is
/// zero in any unit.
pub fn parse(text: &str) -> Result<Duration, String> {
    let invalid = |why: &str| format!("invalid duration {text:?}: {why}");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid(EXAMPLES));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid(EXAMPLES));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(invalid(if unit.is_empty() {
                "a unit is missing (ms, s, m, h), e.g. 100ms, 1.5s, 2m"
            } else {
                EXAMPLES
            }));
        };
        nanos = nanos
            .checked_add(scaled(number, scale).ok_or_else(|| invalid("too long"))?)
            .ok_or_else(|| invalid("too long"))?;
        rest = after.trim_start();
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| invalid("too long"))?;
    // The remainder of a division by 10^9 fits in a u32.
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, sub))
}

/// `number` (digits, maybe one `.`) times `scale` nanoseconds, exactly:
/// decimal arithmetic, so `0.1s` is 100 ms and not a float's neighbour of
/// it. Digits below a nanosecond are dropped.
fn scaled(number: &str, scale: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole.checked_mul(scale)?;
    let mut place = scale;
    for digit in fraction.chars() {
        place /= 10;
        if place == 0 {
            break;
        }
        nanos = nanos.checked_add(u128::from(digit.to_digit(10)?) * place)?;
    }
    Some(nanos)
}

/// [`parse`], refusing zero: for the flags where zero means nothing (a
/// period, a deadline, a timeout), so that a mistake is a usage error
/// like any other.
pub fn parse_positive(text: &str) -> Result<Duration, String> {
    let d = parse(text)?;
    if d.is_zero() {
        return Err(format!("invalid duration {text:?}: must be more than zero"));
    }
    Ok(d)
}

/// A parser of durations from `least` to `most` (inclusive), for flags
/// whose range is fixed: out of range is a usage error, told with the range.
pub fn within(
    least: Duration,
    most: Option<Duration>,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text| {
        let d = parse(text)?;
        let range = match most {
            Some(most) => format!("from {} to {}", format(least), format(most)),
            None => format!("{} or more", format(least)),
        };
        if d < least || most.is_some_and(|most| d > most) {
            return Err(format!("{text:?} is out of range: {range}"));
        }
        Ok(d)
    }
}

/// The shortest way to write `d` that [`parse`] reads back: `100ms`,
/// `1.5s`, `1m`, `2m30s`, `1h5m`, `250us`. Below a minute one unit with a
/// decimal fraction; from a minute on, hours, minutes and seconds.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return decimal(nanos, 1_000, "us");
    }
    if nanos < 1_000_000_000 {
        return decimal(nanos, 1_000_000, "ms");
    }
    if nanos < 60_000_000_000 {
        return decimal(nanos, 1_000_000_000, "s");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    let rest = u128::from(s) * 1_000_000_000 + u128::from(d.subsec_nanos());
    if rest > 0 {
        out.push_str(&decimal(rest, 1_000_000_000, "s"));
    }
    out
}

/// `nanos` in units of `scale` nanoseconds, with as many decimals as it
/// takes and no trailing zeros.
fn decimal(nanos: u128, scale: u128, unit: &str) -> String {
    let (whole, fraction) = (nanos / scale, nanos % scale);
    if fraction == 0 {
        return format!("{whole}{unit}");
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}{unit}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn reads_what_people_write() {
        assert_eq!(parse("100ms"), Ok(MS(100)));
        assert_eq!(parse("1.5s"), Ok(MS(1500)));
        assert_eq!(parse("0.1s"), Ok(MS(100)));
        assert_eq!(parse(".5s"), Ok(MS(500)));
        assert_eq!(parse("2m"), Ok(MS(120_000)));
        assert_eq!(parse("2m30s"), Ok(MS(150_000)));
        assert_eq!(parse("1h 30m"), Ok(MS(5_400_000)));
        assert_eq!(parse(" 250us "), Ok(Duration::from_micros(250)));
        assert_eq!(parse("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn says_what_is_wrong_in_words() {
        let expected = "expected a number and a unit, e.g. 100ms, 1.5s, 2m";
        for bad in ["abc", "", "ms", "1.2.3s", "1x", "-1s", "1s-"] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with(&format!("invalid duration {bad:?}: ")), "{e}");
            assert!(e.ends_with(expected), "{bad:?}: {e}");
        }
        let e = parse("100").unwrap_err();
        assert!(e.contains("a unit is missing"), "{e}");
        let e = parse("99999999999999999999999h").unwrap_err();
        assert!(e.ends_with("too long"), "{e}");
        assert_eq!(
            parse_positive("0ms"),
            Err("invalid duration \"0ms\": must be more than zero".into())
        );
        assert_eq!(
            parse_positive("0"),
            Err("invalid duration \"0\": must be more than zero".into())
        );
        assert_eq!(parse_positive("1ms"), Ok(MS(1)));
    }

    #[test]
    fn writes_the_shortest_form() {
        assert_eq!(format(MS(1500)), "1.5s");
        assert_eq!(format(MS(100)), "100ms");
        assert_eq!(format(MS(60_000)), "1m");
        assert_eq!(format(MS(150_000)), "2m30s");
        assert_eq!(format(MS(3_900_000)), "1h5m");
        assert_eq!(format(MS(3_600_500)), "1h0.5s");
        assert_eq!(format(MS(1)), "1ms");
        assert_eq!(format(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(format(Duration::from_micros(250)), "250us");
        assert_eq!(format(Duration::from_nanos(7)), "7ns");
        assert_eq!(format(Duration::ZERO), "0s");
    }

    #[test]
    fn what_is_written_reads_back() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_nanos(1_234_567_891),
            MS(59_999),
            MS(60_001),
            MS(86_400_000 * 3 + 1),
            Duration::from_secs(u64::MAX / 4),
        ] {
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
    }
}
