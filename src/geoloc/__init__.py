"""geoloc: CosPlace-style visual geo-localization backbone studies."""

__version__ = "0.1.0"
