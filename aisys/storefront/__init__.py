"""The storefront page and the operator view, served by the gateway (see docs/storefront.md)."""
