"""Every job beat sends is a task a worker knows: a name missing from the registry is a dead
letter every time beat fires it (coupons.reconcile once went missing this way)."""

from __future__ import annotations

from config.celery import app


def test_every_beat_job_names_a_registered_task() -> None:
    app.loader.import_default_modules()  # what a worker does at start: autodiscovery
    schedule = app.conf.beat_schedule
    assert schedule
    missing = {
        job: entry["task"] for job, entry in schedule.items() if entry["task"] not in app.tasks
    }
    assert not missing
