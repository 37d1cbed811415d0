"""Settings for the whole suite."""

from hypothesis import HealthCheck, settings

# These machines are shared and noisy: a property test must fail on a wrong answer, never because
# drawing its inputs or running one example took long while something else used the CPU.
settings.register_profile("relay365", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("relay365")
