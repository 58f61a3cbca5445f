"""Ambassadors: components beside an app that broker its traffic to the rest of the world.

``podkit split`` (request splitting, sticky canaries, shadow traffic with response diffs,
progressive delivery) lives in :mod:`podkit.ambassador.split`.
"""
