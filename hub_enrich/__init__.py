"""Hub enrichment: pure functions from a stored raw event to its enrichment columns.

- :mod:`hub_enrich.ua`: user agent → browser, OS, device type (uap-core rules, cached);
- :mod:`hub_enrich.bots`: crawler detection (crawlerdetect + a local patterns file);
- :mod:`hub_enrich.geo`: IP → country, region, city from a MaxMind-format database;
- :mod:`hub_enrich.referrer`: referrer → host, source, channel; UTM parameters;
- :mod:`hub_enrich.enrich`: :class:`Enricher`, which applies them all to a stored event.

Visitor ids and IP truncation live in :mod:`edgekite.visitor`, because hub ingest needs them
before storing an event. No I/O here beyond loading rule, list and database files.
"""

from edgekite.hubstore.enriched import ENRICHED_COLUMNS
from hub_enrich.bots import BotDetector, BotVerdict
from hub_enrich.enrich import COLUMN_NAMES, ENRICHMENT_VERSION, Enricher
from hub_enrich.geo import Geo, GeoLookup
from hub_enrich.referrer import CHANNELS, RefInfo, classify
from hub_enrich.ua import UaInfo, UaParser

__all__ = [
    "CHANNELS",
    "COLUMN_NAMES",
    "ENRICHED_COLUMNS",
    "ENRICHMENT_VERSION",
    "BotDetector",
    "BotVerdict",
    "Enricher",
    "Geo",
    "GeoLookup",
    "RefInfo",
    "UaInfo",
    "UaParser",
    "classify",
]
