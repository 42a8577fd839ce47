"""Schedules: cron with time zones and both DST transitions, every/at/after, validation."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from node.schedule import (
    AtSchedule,
    CronSchedule,
    EverySchedule,
    ScheduleError,
    format_ms,
    jitter_ms,
    next_slot_ms,
    parse_schedule,
    preview,
    slots_between,
)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def local(ms_: int, zone: str) -> str:
    return datetime.fromtimestamp(ms_ / 1000, tz=UTC).astimezone(ZoneInfo(zone)).isoformat()


@pytest.mark.parametrize(
    ("zone", "day_before", "expected"),
    [
        # Spring forward: 02:30 does not exist; it runs once at 03:00 (the first valid instant).
        (
            "Europe/Berlin",
            "2026-03-28T00:00:00+01:00",
            ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
        ),
        (
            "America/New_York",
            "2026-03-07T00:00:00-05:00",
            ["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
        ),
    ],
)
def test_spring_forward_runs_missing_slot_once_at_first_valid_instant(
    zone: str, day_before: str, expected: list[str]
) -> None:
    s = CronSchedule("30 2 * * *", zone)
    assert [local(t, zone) for t in preview(s, ms(day_before), 3)] == expected


@pytest.mark.parametrize(
    ("zone", "expr", "day_before", "expected"),
    [
        # Fall back: 02:30 occurs twice in Berlin; it runs once, at the first occurrence.
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-10-24T00:00:00+02:00",
            ["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
        ),
        (
            "America/New_York",
            "30 1 * * *",
            "2026-10-31T00:00:00-04:00",
            ["2026-10-31T01:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
        ),
    ],
)
def test_fall_back_runs_repeated_wall_time_once(
    zone: str, expr: str, day_before: str, expected: list[str]
) -> None:
    s = CronSchedule(expr, zone)
    assert [local(t, zone) for t in preview(s, ms(day_before), 3)] == expected


def test_fall_back_half_hourly_skips_only_repeated_wall_times() -> None:
    s = CronSchedule("*/30 * * * *", "Europe/Berlin")
    got = [local(t, "Europe/Berlin") for t in preview(s, ms("2026-10-25T01:00:00+02:00"), 5)]
    assert got == [
        "2026-10-25T01:30:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T03:30:00+01:00",
    ]


def test_six_fields_means_seconds_first_and_macros_work() -> None:
    s = parse_schedule({"cron": "*/15 * * * * *"}, 0)
    assert preview(s, 0, 3) == [15_000, 30_000, 45_000]
    hourly = parse_schedule({"cron": "@hourly", "tz": "UTC"}, 0)
    assert preview(hourly, 0, 2) == [3_600_000, 7_200_000]


def test_every_is_aligned_to_epoch_plus_phase() -> None:
    s = EverySchedule(30, 5)
    assert next_slot_ms(s, 0) == 5_000
    assert next_slot_ms(s, 5_000) == 35_000
    assert preview(s, 36_000, 2) == [65_000, 95_000]


def test_at_and_after_are_one_offs() -> None:
    at = parse_schedule({"at": "2027-01-01T09:00:00+01:00"}, 0)
    assert at == AtSchedule(ms("2027-01-01T08:00:00+00:00"))
    assert preview(at, 0, 5) == [at.at_ms]
    assert next_slot_ms(at, at.at_ms) is None
    after = parse_schedule({"after_s": 10}, 1_000)
    assert after == AtSchedule(11_000)


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"cron": "61 * * * *"}, "schedule.cron"),
        ({"cron": "* * *"}, "schedule.cron"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "schedule.tz"),
        ({"cron": "* * * * *", "every_s": 3}, "schedule"),
        ({"every_s": 0}, "schedule.every_s"),
        ({"every_s": 10, "phase_s": 10}, "schedule.phase_s"),
        ({"every_s": "10"}, "schedule.every_s"),
        ({"at": "tomorrow"}, "schedule.at"),
        ({"at": "2027-01-01T09:00:00"}, "schedule.at"),
        ({"after_s": -1}, "schedule.after_s"),
        ({"cron": "* * * * *", "colour": "red"}, "schedule.colour"),
        ([], "schedule"),
    ],
)
def test_invalid_schedules_name_the_field(obj: object, field: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(obj, 0)
    assert info.value.field == field


def test_jitter_is_deterministic_bounded_and_spreads() -> None:
    s = EverySchedule(60, 0, jitter_s=10)
    values = {jitter_ms(s, "job", k * 60_000) for k in range(50)}
    assert all(0 <= v < 10_000 for v in values)
    assert len(values) > 40
    assert jitter_ms(s, "job", 60_000) == jitter_ms(s, "job", 60_000)
    assert jitter_ms(EverySchedule(60), "job", 60_000) == 0


def test_slots_between_is_bounded_and_half_open() -> None:
    s = EverySchedule(10)
    assert slots_between(s, 0, 50_000, 100) == [10_000, 20_000, 30_000, 40_000, 50_000]
    assert slots_between(s, 0, 10_000_000, 3) == [10_000, 20_000, 30_000]


def test_format_ms_is_rfc3339_utc() -> None:
    assert format_ms(0) == "1970-01-01T00:00:00Z"
    assert format_ms(1_500) == "1970-01-01T00:00:01.500Z"


def test_zones_come_from_the_pinned_tzdata_package_not_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import zoneinfo

    from node.schedule import TZDATA_VERSION, load_zone

    load_zone.cache_clear()
    monkeypatch.setattr(zoneinfo, "TZPATH", ())  # no host zone files at all
    zone = load_zone("Europe/Berlin")
    assert zone.key == "Europe/Berlin"
    summer = datetime(2026, 7, 1, 12, tzinfo=zone)
    assert summer.utcoffset() is not None and summer.utcoffset().total_seconds() == 7200  # type: ignore[union-attr]
    assert len(TZDATA_VERSION) >= 5 and TZDATA_VERSION[:4].isdigit()


@pytest.mark.parametrize("name", ["../../etc/passwd", "Europe", "Mars/Olympus", "", "a//b"])
def test_unknown_or_malformed_zone_names_are_rejected(name: str) -> None:
    from node.schedule import ScheduleError, parse_schedule

    with pytest.raises(ScheduleError) as e:
        parse_schedule({"cron": "* * * * *", "tz": name}, 0)
    assert e.value.field == "schedule.tz"
