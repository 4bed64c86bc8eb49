"""Data families: compute a number from a CSV, answer from the files, write a script, join.

Every dataset is drawn from the task's seed; the expected answers are computed here, in
the same way the expert's program computes them in the sandbox.
"""

from __future__ import annotations

import csv
import io
import random
from collections import defaultdict
from dataclasses import dataclass

from trajgym.envs.goals import act
from trajgym.envs.workspace.project import Check, Draw, Project
from trajgym.records.schema import Intent

REGIONS = ("north", "south", "east", "west", "central", "coastal", "mountain")
PRODUCTS = ("widget", "gadget", "sprocket", "gizmo", "bracket", "valve", "hinge", "lever") + (
    "nozzle",
    "spindle",
    "gasket",
    "pulley",
)
MONTHS = ("January", "February", "March", "April", "May", "June")
PEOPLE = ("Avery", "Blake", "Casey", "Devon", "Emerson", "Finley", "Harper", "Jordan") + (
    "Kendall",
    "Logan",
    "Morgan",
    "Parker",
    "Quinn",
    "Reese",
    "Rowan",
    "Sawyer",
    "Taylor",
)
CITIES = ("Lisbon", "Oslo", "Quito", "Perth", "Austin", "Kyoto", "Dakar", "Lima", "Porto")
SERVICES = ("api", "auth", "billing", "search", "worker", "gateway", "cache", "mailer")
PACKAGES = ("requests", "numpy", "flask", "pydantic", "rich", "click", "httpx", "jinja2")


def _money(x: float) -> str:
    return f"{x:.2f}"


def _csv(header: list[str], rows: list[list[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


Row = tuple[str, str, str, int, float]  # date, region, product, units, unit_price


@dataclass(frozen=True)
class Sales:
    """A sales table: date, region, product, units, unit_price."""

    path: str
    rows: tuple[Row, ...]

    @classmethod
    def draw(cls, rng: random.Random) -> Sales:
        """A table of 20-50 sales over a few regions and products, with fixed prices."""
        regions = rng.sample(REGIONS, rng.randint(3, 5))
        products = rng.sample(PRODUCTS, rng.randint(3, 6))
        prices = {p: round(rng.uniform(2.5, 99.99), 2) for p in products}
        rows: list[Row] = []
        for _ in range(rng.randint(20, 50)):
            month, day = rng.randint(1, len(MONTHS)), rng.randint(1, 28)
            product = rng.choice(products)
            region = rng.choice(regions)
            rows.append(
                (
                    f"2026-{month:02d}-{day:02d}",
                    region,
                    product,
                    rng.randint(1, 20),
                    prices[product],
                )
            )
        rows.sort()
        return cls(f"data/{rng.choice(('sales', 'shop_sales', 'sales_2026'))}.csv", tuple(rows))

    @property
    def text(self) -> str:
        """The table as CSV."""
        return _csv(
            ["date", "region", "product", "units", "unit_price"], [list(r) for r in self.rows]
        )

    def totals(self, key: str, metric: str) -> dict[str, float]:
        """Total units or revenue (units x unit_price, to the cent) per region or product."""
        sums: dict[str, float] = defaultdict(float)
        for row in self.rows:
            sums[row[1] if key == "region" else row[2]] += (
                row[3] if metric == "units" else row[3] * row[4]
            )
        return {k: round(v, 2) for k, v in sorted(sums.items())}


_READ_SALES = "import csv\nrows = list(csv.DictReader(open({path!r})))\n"


def csv_stat(d: Draw) -> tuple[Intent, Project] | None:
    """A question about a sales CSV whose answer is computed from it."""
    sales = Sales.draw(d.rng)
    question = d.rng.choice(("region_revenue", "product_units", "month_sales", "top_region"))
    code = _READ_SALES.format(path=sales.path)
    slots = {"path": sales.path}
    if question == "region_revenue":
        region = d.rng.choice(sorted({r[1] for r in sales.rows}))
        answer = _money(sales.totals("region", "revenue")[region])
        code += (
            "print(round(sum(int(r['units']) * float(r['unit_price'])"
            f" for r in rows if r['region'] == {region!r}), 2))\n"
        )
        slots["region"] = region
    elif question == "product_units":
        product = d.rng.choice(sorted({r[2] for r in sales.rows}))
        answer = str(int(sales.totals("product", "units")[product]))
        code += f"print(sum(int(r['units']) for r in rows if r['product'] == {product!r}))\n"
        slots["product"] = product
    elif question == "month_sales":
        month = d.rng.randrange(len(MONTHS))
        answer = str(sum(1 for r in sales.rows if r[0][5:7] == f"{month + 1:02d}"))
        code += f"print(sum(1 for r in rows if r['date'][5:7] == '{month + 1:02d}'))\n"
        slots["month"] = MONTHS[month]
    else:
        units = sales.totals("region", "units")
        best = sorted(units.values())
        if len(best) > 1 and best[-1] == best[-2]:
            return None  # a tie has no single answer
        answer = max(units, key=lambda k: units[k])
        code += (
            "totals = {}\nfor r in rows:\n"
            "    totals[r['region']] = totals.get(r['region'], 0) + int(r['units'])\n"
            "print(max(totals, key=totals.get))\n"
        )
    files = {
        sales.path: sales.text,
        "README.md": "# Sales\n\nExports from the shop, one row a sale.\n",
    }
    actions = [act("list_files"), act("run_python", code=code)]
    intent = d.intent("csv_stat", slots, actions, (answer,), kind=f"csv_{question}")
    return intent, Project(files)


def write_script(d: Draw) -> tuple[Intent, Project] | None:
    """A script that turns the sales CSV into a JSON summary; run fresh by the verifier."""
    sales = Sales.draw(d.rng)
    key, metric = d.rng.choice(("region", "product")), d.rng.choice(("units", "revenue"))
    script = f"scripts/{metric}_by_{key}.py"
    output = f"out/{metric}_by_{key}.json"
    value = "int(r['units'])" if metric == "units" else "int(r['units']) * float(r['unit_price'])"
    code = (
        "import csv, json, os\n\n"
        f"totals = {{}}\nfor r in csv.DictReader(open({sales.path!r})):\n"
        f"    totals[r[{key!r}]] = totals.get(r[{key!r}], 0) + {value}\n"
        f"os.makedirs('out', exist_ok=True)\n"
        f"with open({output!r}, 'w') as f:\n"
        "    json.dump({k: round(v, 2) for k, v in sorted(totals.items())}, f, indent=1)\n"
    )
    check = Check(
        kind="script_output",
        restore={sales.path: sales.text},
        script=script,
        output=output,
        expected=sales.totals(key, metric),
    )
    actions = [
        act("read_file", path=sales.path),
        act("write_file", path=script, content=code),
        act("run_shell", command=f"python3 {script} && cat {output}"),
    ]
    described = "units" if metric == "units" else "revenue (units x unit_price)"
    slots = {
        "path": sales.path,
        "script": script,
        "result": output,
        "key": key,
        "metric": described,
    }
    intent = d.intent("write_script", slots, actions)
    return intent, Project({sales.path: sales.text}, (check,))


def answer_from_files(d: Draw) -> tuple[Intent, Project] | None:
    """A fact that one of the project's files states (ports, owners, pins, error counts)."""
    services = d.rng.sample(SERVICES, 4)
    ports = {s: d.rng.randrange(3000, 9900) for s in services}
    owners = dict(zip(services, d.rng.sample(PEOPLE, 4), strict=True))
    pins = {
        p: f"{d.rng.randint(1, 9)}.{d.rng.randint(0, 30)}.{d.rng.randint(0, 9)}"
        for p in d.rng.sample(PACKAGES, 4)
    }
    levels = [
        d.rng.choice(("INFO", "INFO", "WARNING", "ERROR")) for _ in range(d.rng.randint(15, 40))
    ]
    files = {
        "config/services.ini": "".join(
            f"[{s}]\nhost = 10.0.0.{i + 2}\nport = {ports[s]}\n\n" for i, s in enumerate(services)
        ),
        "docs/OWNERS.md": "# Owners\n\n| service | owner |\n|---|---|\n"
        + "".join(f"| {s} | {o} |\n" for s, o in owners.items()),
        "requirements.txt": "".join(f"{p}=={v}\n" for p, v in pins.items()),
        "logs/app.log": "".join(
            f"2026-03-{i % 28 + 1:02d} 12:{i % 60:02d}:00 {lvl} "
            f"{d.rng.choice(services)}: event {i}\n"
            for i, lvl in enumerate(levels)
        ),
    }
    question = d.rng.choice(("port", "owner", "pin", "errors"))
    service, package = d.rng.choice(services), d.rng.choice(sorted(pins))
    slots = {"service": service, "package": package}
    if question == "port":
        answer, actions = str(ports[service]), [act("read_file", path="config/services.ini")]
    elif question == "owner":
        answer, actions = owners[service], [act("read_file", path="docs/OWNERS.md")]
    elif question == "pin":
        answer, actions = pins[package], [act("read_file", path="requirements.txt")]
    else:
        answer = str(levels.count("ERROR"))
        actions = [act("run_shell", command="grep -c ERROR logs/app.log")]
    actions = [act("list_files"), *actions]
    intent = d.intent("answer_from_files", slots, actions, (answer,), kind=f"files_{question}")
    return intent, Project(files)


def csv_join(d: Draw) -> tuple[Intent, Project] | None:
    """A question that needs two CSVs joined on a key (held out: ood only)."""
    people = d.rng.sample(PEOPLE, d.rng.randint(5, 9))
    cities = d.rng.sample(CITIES, 3)
    customers = [(f"C{i + 1:03d}", name, d.rng.choice(cities)) for i, name in enumerate(people)]
    orders = [
        (f"O{i + 1:04d}", d.rng.choice(customers)[0], round(d.rng.uniform(5, 400), 2))
        for i in range(d.rng.randint(15, 40))
    ]
    city_of = {c: city for c, _, city in customers}
    name_of = {c: name for c, name, _ in customers}
    files = {
        "data/customers.csv": _csv(["customer_id", "name", "city"], [list(c) for c in customers]),
        "data/orders.csv": _csv(["order_id", "customer_id", "amount"], [list(o) for o in orders]),
    }
    head = (
        "import csv\ncustomers = {r['customer_id']: r"
        " for r in csv.DictReader(open('data/customers.csv'))}\n"
        "orders = list(csv.DictReader(open('data/orders.csv')))\n"
    )
    if d.rng.random() < 0.5:
        city = d.rng.choice(sorted({city_of[o[1]] for o in orders}))
        answer = _money(round(sum(o[2] for o in orders if city_of[o[1]] == city), 2))
        code = (
            head
            + "print(round(sum(float(o['amount']) for o in orders"
            + f" if customers[o['customer_id']]['city'] == {city!r}), 2))\n"
        )
        kind, slots = "join_city_total", {"city": city}
    else:
        spent: dict[str, float] = defaultdict(float)
        for o in orders:
            spent[name_of[o[1]]] += o[2]
        ranked = sorted(spent.values())
        if len(ranked) > 1 and abs(ranked[-1] - ranked[-2]) < 0.01:
            return None
        answer = max(spent, key=lambda k: spent[k])
        code = head + (
            "spent = {}\nfor o in orders:\n    name = customers[o['customer_id']]['name']\n"
            "    spent[name] = spent.get(name, 0) + float(o['amount'])\n"
            "print(max(spent, key=spent.get))\n"
        )
        kind, slots = "join_top_customer", {}
    actions = [act("list_files"), act("run_python", code=code)]
    return d.intent("csv_join", slots, actions, (answer,), kind=kind), Project(files)
