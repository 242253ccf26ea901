//! Calendar dates of Unix times, for what the exporter and `xtask` print
//! (a database's build date). One file for both: `xtask` includes it with
//! `#[path]`, as it cannot depend on the exporter it builds.

/// (year, month, day) of the proleptic Gregorian calendar for a count of
/// days since 1970-01-01 (Howard Hinnant's `civil_from_days`, for days ≥ 0).
pub(crate) fn from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01, so leap days end each 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub(crate) fn date(epoch: u64) -> String {
    let (year, month, day) = from_days(epoch / 86_400);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_times_to_dates() {
        assert_eq!(from_days(0), (1970, 1, 1));
        assert_eq!(from_days(59), (1970, 3, 1));
        assert_eq!(from_days(11_016), (2000, 2, 29));
        assert_eq!(from_days(11_017), (2000, 3, 1));
        assert_eq!(from_days(19_722), (2023, 12, 31));
        assert_eq!(from_days(19_723), (2024, 1, 1));
        assert_eq!(from_days(47_541), (2100, 3, 1));
        assert_eq!(from_days(47_540), (2100, 2, 28));
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_796_083_200), "2026-12-01");
    }
}
