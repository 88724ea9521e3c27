"""Sensors and schedules: alert-driven re-materialisation, new data, the daily run."""

from .alerts import check_alert_sensor
from .new_data import new_data_sensor
from .quality import search_quality_sensor
from .schedules import audit_schedule, daily_schedule

all_sensors = [check_alert_sensor, new_data_sensor, search_quality_sensor]
all_schedules = [daily_schedule, audit_schedule]

__all__ = ["all_schedules", "all_sensors", "audit_schedule", "check_alert_sensor", "daily_schedule", "new_data_sensor", "search_quality_sensor"]
