"""Writes orders_gbk.csv beside this file: 40 made-up orders as Excel exports them (GBK, Chinese
headers, amounts with thousands separators, percentages, mobile numbers in three spellings, slash
dates). The csv is committed; this script says how it was made: python tests/data/make_orders_gbk.py"""

import csv
import io
import random
from pathlib import Path

rng = random.Random(20231001)
regions = ["北京", "上海", "广州", "深圳", "成都"]
rows = []
for i in range(40):
    amount = rng.choice([rng.randint(10, 999) * 1.0, rng.randint(1000, 99999) + rng.choice([0, 0.5, 0.25]), rng.randint(100000, 999999)])
    amount = {0: 1234.5, 1: 442820}.get(i, amount)
    amt = f"{amount:,.2f}" if amount % 1 else f"{int(amount):,}"
    disc = rng.choice(["0%", "5%", "8%", "10%", "12%", "15%", "7.5%", "20%", "2.5%", "30%"])
    disc = "12%" if i == 2 else disc
    mob = "1" + rng.choice("3456789") + "".join(rng.choice("0123456789") for _ in range(9))
    if i % 10 == 3:
        mob = f"{mob[:3]}-{mob[3:7]}-{mob[7:]}"
    if i % 10 == 7:
        mob = f"+86 {mob[:3]} {mob[3:7]} {mob[7:]}"
    date = f"2023/{rng.randint(1, 12)}/{rng.randint(1, 28)}"
    rows.append([f"DD2023{i + 1:06d}", date, mob, amt, disc, rng.choice(regions)])

buf = io.StringIO()
writer = csv.writer(buf, lineterminator="\r\n")
writer.writerow(["订单号", "下单日期", "客户手机", "金额", "折扣率", "地区"])
writer.writerows(rows)
(Path(__file__).parent / "orders_gbk.csv").write_bytes(buf.getvalue().encode("gbk"))
