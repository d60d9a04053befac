"""Deployments of the upgrade flow: a scheduled maintenance-window one and a manual one."""
