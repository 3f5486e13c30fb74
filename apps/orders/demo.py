"""Demo products for `make run`."""

from decimal import Decimal
from typing import Any

from .models import Product

DEMO = [("Espresso beans 1 kg", "24.90", 200), ("Moka pot", "39.00", 50), ("Grinder", "89.50", 10)]


def load(stdout: Any) -> None:
    for name, price, stock in DEMO:
        Product.objects.get_or_create(
            name=name, defaults={"price": Decimal(price), "stock_on_hand": stock}
        )
    stdout.write(f"demo products: {len(DEMO)} (GET /api/products/)")
