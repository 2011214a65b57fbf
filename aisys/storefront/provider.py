"""What the storefront pages read in a replica: the catalogue and the page key.

Thin adapters over the lake and the gateway's key files; the pages themselves are in
:mod:`aisys.storefront.routes`. The operator view's data (models, decisions, drift) is serving's
(:mod:`aisys.serving.ops_view`), handed to the routes as a callable: the pages never import serving.
"""

from __future__ import annotations

import logging
import os

from aisys.config import AppConfig
from aisys.storefront.catalogue import Catalogue, build_catalogue

logger = logging.getLogger(__name__)

STOREFRONT_KEY_ENV = "AISYS_STOREFRONT_KEY"


def load_catalogue(cfg: AppConfig, snapshot_id: str | None) -> Catalogue:
    """The catalogue of a lake snapshot (the latest when ``snapshot_id`` is None) and the lake's
    product table (``aisys.data.products``); empty without a snapshot."""
    from aisys.data.lake import Lake
    from aisys.data.products import read_products

    lake = Lake.from_config(cfg.paths)
    snapshot_id = snapshot_id or getattr(lake.latest(), "snapshot_id", None)
    if snapshot_id is None:
        return Catalogue()
    products = read_products(lake)
    if products is None:
        logger.warning("no product table at %s/products: the shop shows bare ids (run `aisys data`)", cfg.paths.lake_uri)
    return build_catalogue(lake.read_events(snapshot_id), products)


def storefront_key(cfg: AppConfig) -> str | None:
    """The publishable storefront-scope key the page embeds.

    ``$AISYS_STOREFRONT_KEY`` in a deployment; the local dev key
    (``<workspace>/dev-keys.json``) on a laptop; None when auth is off.
    """
    if not cfg.gateway.auth:
        return None
    if os.environ.get(STOREFRONT_KEY_ENV):
        return os.environ[STOREFRONT_KEY_ENV]
    from aisys.gateway import read_dev_keys

    return read_dev_keys(cfg).get("dev-storefront")
