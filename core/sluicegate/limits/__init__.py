"""Limits on what keys, teams and users may use: rate limits (:mod:`.ratelimit`, :mod:`.ratelimit_redis`) and the
key defaults and ceilings from config.yaml (:mod:`.key_params`)."""
