"""The Retail world: customers, payment methods, a product catalog and orders, from a seed.

A world is generated once per seed and shared, immutable, by every episode; episodes write
to a copy-on-write overlay (:mod:`trajgym.envs.store`). Customers are partitioned between
the splits so that no customer, order or payment method appears in two splits' tasks.
"""

from __future__ import annotations

import functools
import random
from importlib import resources
from typing import Literal

import yaml

from trajgym.envs.desk import Record, split_of
from trajgym.records.schema import Split

OrderStatus = Literal[
    "pending",
    "pending (item modified)",
    "processed",
    "shipped",
    "delivered",
    "cancelled",
    "return requested",
    "exchange requested",
]


class Address(Record):
    """A postal address."""

    address1: str
    address2: str
    city: str
    state: str
    country: str
    zip: str

    def spoken(self) -> str:
        """The address as a person would say it."""
        line2 = f", {self.address2}" if self.address2 else ""
        return f"{self.address1}{line2}, {self.city}, {self.state} {self.zip}, {self.country}"


class PaymentMethod(Record):
    """A card, gift card or PayPal account on file."""

    id: str
    source: Literal["credit_card", "gift_card", "paypal"]
    brand: str | None = None
    last_four: str | None = None
    balance: float | None = None

    def spoken(self) -> str:
        """How a customer refers to this payment method."""
        if self.source == "credit_card":
            return f"my {self.brand} credit card ending in {self.last_four}"
        if self.source == "gift_card":
            return "my gift card"
        return "my PayPal account"


class Customer(Record):
    """A customer account."""

    user_id: str
    first_name: str
    last_name: str
    email: str
    address: Address
    payment_methods: tuple[PaymentMethod, ...]
    orders: tuple[str, ...]
    split: Split


class Variant(Record):
    """One purchasable variant (item) of a product."""

    item_id: str
    options: dict[str, str]
    price: float
    available: bool


class Product(Record):
    """A product type with its variants."""

    product_id: str
    name: str
    variants: dict[str, Variant]


class OrderItem(Record):
    """A variant as bought in an order."""

    item_id: str
    product_id: str
    name: str
    options: dict[str, str]
    price: float

    def spoken(self) -> str:
        """How a customer refers to this item."""
        return f"the {self.name} ({', '.join(self.options.values())})"


class Payment(Record):
    """A payment or refund on an order."""

    kind: Literal["payment", "refund"]
    amount: float
    payment_method_id: str


class Order(Record):
    """An order and everything that happened to it."""

    order_id: str
    user_id: str
    status: OrderStatus
    address: Address
    items: tuple[OrderItem, ...]
    payments: tuple[Payment, ...]
    tracking_id: str | None = None
    cancel_reason: str | None = None
    return_items: tuple[str, ...] = ()
    exchange_items: tuple[str, ...] = ()
    exchange_new_items: tuple[str, ...] = ()

    @property
    def total(self) -> float:
        """The sum of the items' prices."""
        return round(sum(i.price for i in self.items), 2)


class World(Record):
    """Everything generated from one seed."""

    seed: int
    customers: dict[str, Customer]
    products: dict[str, Product]
    orders: dict[str, Order]

    @functools.cached_property
    def user_by_email(self) -> dict[str, str]:
        """Index: email -> user id (look-ups must not scan the world on every call)."""
        return {c.email: c.user_id for c in self.customers.values()}

    @functools.cached_property
    def user_by_name_zip(self) -> dict[tuple[str, str, str], str]:
        """Index: (first name, last name, zip), lower-cased -> user id."""
        return {
            (c.first_name.lower(), c.last_name.lower(), c.address.zip): c.user_id
            for c in self.customers.values()
        }


_FIRST = (
    "Emma Liam Olivia Noah Ava Ethan Sofia Mason Isabella Lucas Mia Aiden Amelia James Harper "
    "Yusuf Chen Priya Mateo Aisha Omar Lena Raj Yuki Fatima Diego Ingrid Kwame Nadia Tomas "
    "Elena Hugo Zara Ivan Leila Marco Anya Samir Grace Daniel"
).split()
_LAST = (
    "Smith Garcia Kim Nguyen Patel Johnson Brown Lopez Silva Ito Muller Rossi Khan Novak Cohen "
    "Okafor Hansen Moreau Santos Ahmed Larsen Dubois Kowalski Tanaka Schmidt Murphy Rivera Wang "
    "Fischer Costa"
).split()
_STREETS = "Oak Maple Cedar Pine Elm Birch Willow Lake Hill River Park Sunset Forest Main".split()
_STREET_KINDS = ("Street", "Avenue", "Road", "Lane", "Drive")
_CITIES = (
    ("Springfield", "IL", "627"),
    ("Austin", "TX", "787"),
    ("Denver", "CO", "802"),
    ("Portland", "OR", "972"),
    ("Columbus", "OH", "432"),
    ("Madison", "WI", "537"),
    ("Raleigh", "NC", "276"),
    ("Tucson", "AZ", "857"),
    ("Boise", "ID", "837"),
    ("Albany", "NY", "122"),
    ("Richmond", "VA", "232"),
    ("Omaha", "NE", "681"),
    ("Seattle", "WA", "981"),
    ("Phoenix", "AZ", "850"),
    ("Atlanta", "GA", "303"),
)
_BRANDS = ("Visa", "Mastercard", "Amex")
_STATUS_WEIGHTS = {"pending": 30, "processed": 8, "shipped": 10, "delivered": 42, "cancelled": 10}


def random_address(rng: random.Random) -> Address:
    """A plausible US address."""
    city, state, zip_prefix = rng.choice(_CITIES)
    return Address(
        address1=f"{rng.randint(1, 999)} {rng.choice(_STREETS)} {rng.choice(_STREET_KINDS)}",
        address2=f"Apt {rng.randint(1, 60)}" if rng.random() < 0.4 else "",
        city=city,
        state=state,
        country="USA",
        zip=f"{zip_prefix}{rng.randint(0, 99):02d}",
    )


@functools.lru_cache(maxsize=4)
def make_world(seed: int = 0, n_customers: int = 500) -> World:
    """Generate (once per arguments) the world for ``seed``."""
    rng = random.Random(seed)
    products = _make_products(rng)
    customers: dict[str, Customer] = {}
    orders: dict[str, Order] = {}
    for index in range(n_customers):
        customer = _make_customer(rng, index, n_customers)
        customer_orders = [
            _make_order(rng, customer, products, orders) for _ in range(rng.choice((1, 2, 2, 3)))
        ]
        for order in customer_orders:
            orders[order.order_id] = order
        customer = customer.model_copy(
            update={"orders": tuple(o.order_id for o in customer_orders)}
        )
        customers[customer.user_id] = customer
    return World(seed=seed, customers=customers, products=products, orders=orders)


def _make_products(rng: random.Random) -> dict[str, Product]:
    spec = yaml.safe_load(resources.files(__package__).joinpath("catalog.yaml").read_text())
    products = {}
    for entry in spec:
        product_id = f"{rng.randrange(10**9, 10**10)}"
        axes = list(entry["options"].items())
        combos: list[dict[str, str]] = [{}]
        for axis, values in axes:
            combos = [{**c, axis: str(v)} for c in combos for v in values]
        variants = {}
        for combo in combos:
            item_id = f"{rng.randrange(10**9, 10**10)}"
            price = round(entry["base_price"] * rng.uniform(0.8, 1.25), 2)
            variants[item_id] = Variant(
                item_id=item_id, options=combo, price=price, available=rng.random() < 0.8
            )
        products[product_id] = Product(product_id=product_id, name=entry["name"], variants=variants)
    return products


def _make_customer(rng: random.Random, index: int, total: int) -> Customer:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    user_id = f"{first.lower()}_{last.lower()}_{rng.randint(1000, 9999)}"
    payments = [
        PaymentMethod(
            id=f"credit_card_{rng.randint(10**6, 10**7 - 1)}",
            source="credit_card",
            brand=rng.choice(_BRANDS),
            last_four=f"{rng.randint(0, 9999):04d}",
        )
    ]
    if rng.random() < 0.5:
        payments.append(
            PaymentMethod(
                id=f"gift_card_{rng.randint(10**6, 10**7 - 1)}",
                source="gift_card",
                balance=float(rng.randint(0, 300)),
            )
        )
    if rng.random() < 0.4:
        payments.append(
            PaymentMethod(id=f"paypal_{rng.randint(10**6, 10**7 - 1)}", source="paypal")
        )
    return Customer(
        user_id=user_id,
        first_name=first,
        last_name=last,
        email=f"{first.lower()}.{last.lower()}{rng.randint(10, 99)}@example.com",
        address=random_address(rng),
        payment_methods=tuple(payments),
        orders=(),
        split=split_of(index, total),
    )


def _make_order(
    rng: random.Random, customer: Customer, products: dict[str, Product], taken: dict[str, Order]
) -> Order:
    order_id = f"#W{rng.randint(10**6, 10**7 - 1)}"
    while order_id in taken:
        order_id = f"#W{rng.randint(10**6, 10**7 - 1)}"
    status = rng.choices(list(_STATUS_WEIGHTS), weights=list(_STATUS_WEIGHTS.values()))[0]
    chosen = rng.sample(sorted(products), k=rng.choice((1, 1, 2, 2, 3, 4)))
    items = []
    for product_id in chosen:
        product = products[product_id]
        variant = product.variants[rng.choice(sorted(product.variants))]
        items.append(
            OrderItem(
                item_id=variant.item_id,
                product_id=product_id,
                name=product.name,
                options=variant.options,
                price=variant.price,
            )
        )
    method = (
        customer.payment_methods[0] if rng.random() < 0.7 else rng.choice(customer.payment_methods)
    )
    total = round(sum(i.price for i in items), 2)
    payments = [Payment(kind="payment", amount=total, payment_method_id=method.id)]
    if status == "cancelled":
        payments.append(Payment(kind="refund", amount=total, payment_method_id=method.id))
    shipped = status in ("shipped", "delivered")
    return Order(
        order_id=order_id,
        user_id=customer.user_id,
        status=status,
        address=customer.address if rng.random() < 0.85 else random_address(rng),
        items=tuple(items),
        payments=tuple(payments),
        tracking_id=f"{rng.randint(10**11, 10**12 - 1)}" if shipped else None,
        cancel_reason="no longer needed" if status == "cancelled" else None,
    )
