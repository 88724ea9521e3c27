"""Asset checks on vectors and coverage (issue #3). None are defined yet."""

all_checks: list = []
