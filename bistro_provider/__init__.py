"""Bistro resource-forest scheduling for Apache Airflow."""

__version__ = "0.1.0"
