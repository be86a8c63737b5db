"""zoomrules: Zoom events -> JMESPath rules -> actions."""

__version__ = "0.1.0"
