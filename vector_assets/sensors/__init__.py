"""Sensors and schedules (issue #3). None are defined yet."""

all_sensors: list = []
all_schedules: list = []
