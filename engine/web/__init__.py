"""The status page server: HTML, ``/api/status`` and ``/metrics``."""
