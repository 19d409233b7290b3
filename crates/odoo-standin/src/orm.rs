//! The ORM calls careplane makes through `/web/dataset/call_kw`, answered from the
//! stand-in's tables with Odoo 18's access rules as far as they matter to careplane:
//! `res.users` `search_read`/`create`/`write` (creating or changing users needs Access
//! Rights, `base.group_erp_manager`; passwords hashed like passlib's pbkdf2-sha512;
//! `groups_id` commands 6 and 4), `ir.model.data` and `ir.module.module` `search_read`,
//! `res.partner` and `product.product` `search_read`/`create`, and `purchase.order`
//! `search_read`/`create`/`button_confirm`/`button_cancel`/`unlink` (cancelled orders only)
//! for purchase users. Domains
//! are conjunctions of `=` terms; anything else is refused, never guessed.

use postgres::Client;
use serde_json::{json, Value};

use crate::util;

/// An answer's error: (exception class, message).
pub type Fault = (&'static str, String);

fn db(e: postgres::Error) -> Fault {
    (
        "psycopg2.OperationalError",
        crate::pg::DbError::query(&e).message,
    )
}

fn access(what: &str) -> Fault {
    (
        "odoo.exceptions.AccessError",
        format!("You are not allowed to {what}."),
    )
}

struct Model {
    name: &'static str,
    table: &'static str,
    /// Readable fields (`id` first); `groups_id` is computed from the group table.
    fields: &'static [&'static str],
    /// The module that defines it (its table exists once installed).
    module: &'static str,
    read: &'static str,
    create: &'static str,
}

const MODELS: &[Model] = &[
    Model {
        name: "res.users",
        table: "res_users",
        fields: &["id", "login", "active", "groups_id"],
        module: "base",
        read: "base.group_user",
        create: "base.group_erp_manager",
    },
    Model {
        name: "ir.model.data",
        table: "ir_model_data",
        fields: &["id", "module", "name", "model", "res_id"],
        module: "base",
        read: "base.group_user",
        create: "base.group_system",
    },
    Model {
        name: "ir.module.module",
        table: "ir_module_module",
        fields: &["id", "name", "state"],
        module: "base",
        read: "base.group_user",
        create: "base.group_system",
    },
    Model {
        name: "res.partner",
        table: "res_partner",
        fields: &["id", "name"],
        module: "base",
        read: "base.group_user",
        create: "base.group_erp_manager",
    },
    Model {
        name: "product.product",
        table: "product_product",
        fields: &["id", "name", "default_code", "purchase_ok"],
        module: "purchase",
        read: "base.group_user",
        create: "base.group_erp_manager",
    },
    Model {
        name: "purchase.order",
        table: "purchase_order",
        fields: &["id", "name", "state", "partner_id", "amount_total"],
        module: "purchase",
        read: "purchase.group_purchase_user",
        create: "purchase.group_purchase_user",
    },
];

/// Whether user `uid` is in the group with XML id `xmlid` (`module.name`).
pub fn has_group(c: &mut Client, uid: i32, xmlid: &str) -> Result<bool, Fault> {
    let (module, name) = xmlid.split_once('.').unwrap_or(("base", xmlid));
    let r = c
        .query_opt(
            "SELECT 1 FROM ir_model_data d JOIN res_groups_users_rel r ON r.gid = d.res_id
             WHERE d.module = $1 AND d.name = $2 AND d.model = 'res.groups' AND r.uid = $3",
            &[&module, &name, &uid],
        )
        .map_err(db)?;
    Ok(r.is_some())
}

/// Whether module `name` is installed.
pub fn installed(c: &mut Client, name: &str) -> Result<bool, Fault> {
    Ok(c.query_opt(
        "SELECT 1 FROM ir_module_module WHERE name = $1 AND state = 'installed'",
        &[&name],
    )
    .map_err(db)?
    .is_some())
}

fn model(c: &mut Client, name: &str) -> Result<&'static Model, Fault> {
    let m = MODELS
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| ("builtins.KeyError", format!("'{name}'")))?;
    if m.module != "base" && !installed(c, m.module)? {
        return Err(("builtins.KeyError", format!("'{name}'")));
    }
    Ok(m)
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `[[field, "=", value], ...]` as a SQL condition on `m`'s columns, with its parameters.
fn condition(m: &Model, domain: &Value, active_test: bool) -> Result<(String, Vec<String>), Fault> {
    let bad = |t: &Value| {
        (
            "builtins.ValueError",
            format!("the stand-in only evaluates [field, '=', value] terms, not {t}"),
        )
    };
    let mut sql = vec!["true".to_string()];
    let mut params = Vec::new();
    for t in domain.as_array().into_iter().flatten() {
        let (Some(f), Some("="), Some(v)) = (t[0].as_str(), t[1].as_str(), scalar(&t[2])) else {
            return Err(bad(t));
        };
        if !m.fields.contains(&f) || f == "groups_id" {
            return Err((
                "builtins.ValueError",
                format!("Invalid field {}.{f} in leaf {t}", m.name),
            ));
        }
        params.push(v);
        sql.push(format!("{f}::text = ${}", params.len()));
    }
    if active_test && m.fields.contains(&"active") {
        sql.push("active".into());
    }
    Ok((sql.join(" AND "), params))
}

fn search_read(c: &mut Client, m: &Model, params: &Value) -> Result<Value, Fault> {
    let kwargs = &params["kwargs"];
    let domain = params["args"].get(0).cloned().unwrap_or(json!([]));
    let active_test = kwargs["context"]["active_test"].as_bool().unwrap_or(true);
    let (cond, values) = condition(m, &domain, active_test)?;
    let limit = kwargs["limit"].as_i64().unwrap_or(80);
    // Fields by keyword or, as Odoo also takes them, as the second positional argument.
    let fields = kwargs["fields"].as_array().or(params["args"][1].as_array());
    let wanted: Vec<&str> = match fields {
        Some(f) if !f.is_empty() => f.iter().filter_map(Value::as_str).collect(),
        _ => m.fields.to_vec(),
    };
    if let Some(f) = wanted.iter().find(|f| !m.fields.contains(f)) {
        return Err((
            "builtins.ValueError",
            format!("Invalid field '{f}' on model '{}'", m.name),
        ));
    }
    let cols: Vec<&str> = m
        .fields
        .iter()
        .copied()
        .filter(|f| *f != "groups_id")
        .collect();
    let sql = format!(
        "SELECT row_to_json(t)::text FROM (SELECT {} FROM {} WHERE {cond} ORDER BY id DESC LIMIT {limit}) t",
        cols.join(", "),
        m.table,
    );
    let p: Vec<&(dyn postgres::types::ToSql + Sync)> = values
        .iter()
        .map(|v| v as &(dyn postgres::types::ToSql + Sync))
        .collect();
    let rows = c.query(&sql, &p).map_err(db)?;
    let mut out = Vec::new();
    for r in rows {
        let row: Value = serde_json::from_str(&r.get::<_, String>(0)).unwrap_or(Value::Null);
        let mut rec = serde_json::Map::new();
        rec.insert("id".into(), row["id"].clone());
        for f in &wanted {
            let v = if *f == "groups_id" {
                let uid = row["id"].as_i64().unwrap_or(0) as i32;
                let gids: Vec<i32> = c
                    .query(
                        "SELECT gid FROM res_groups_users_rel WHERE uid = $1 ORDER BY gid",
                        &[&uid],
                    )
                    .map_err(db)?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                json!(gids)
            } else {
                row[*f].clone()
            };
            rec.insert((*f).to_string(), v);
        }
        out.push(Value::Object(rec));
    }
    Ok(Value::Array(out))
}

/// Applies `groups_id` commands (6: replace, 4: add) to user `uid`.
fn set_groups(c: &mut Client, uid: i32, cmds: &Value) -> Result<(), Fault> {
    for cmd in cmds.as_array().into_iter().flatten() {
        match cmd[0].as_i64() {
            Some(6) => {
                c.execute("DELETE FROM res_groups_users_rel WHERE uid = $1", &[&uid])
                    .map_err(db)?;
                for g in cmd[2].as_array().into_iter().flatten() {
                    let g = g.as_i64().unwrap_or(0) as i32;
                    c.execute(
                        "INSERT INTO res_groups_users_rel (gid, uid) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[&g, &uid],
                    )
                    .map_err(db)?;
                }
            }
            Some(4) => {
                let g = cmd[1].as_i64().unwrap_or(0) as i32;
                c.execute(
                    "INSERT INTO res_groups_users_rel (gid, uid) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&g, &uid],
                )
                .map_err(db)?;
            }
            _ => {
                return Err((
                    "builtins.ValueError",
                    format!("the stand-in applies only commands 6 and 4, not {cmd}"),
                ))
            }
        }
    }
    Ok(())
}

fn write_user(c: &mut Client, uid: i32, vals: &Value) -> Result<(), Fault> {
    if let Some(p) = vals["password"].as_str() {
        c.execute(
            "UPDATE res_users SET password = $1 WHERE id = $2",
            &[&util::pbkdf2_sha512(p), &uid],
        )
        .map_err(db)?;
    }
    if let Some(a) = vals["active"].as_bool() {
        c.execute(
            "UPDATE res_users SET active = $1 WHERE id = $2",
            &[&a, &uid],
        )
        .map_err(db)?;
    }
    if let Some(g) = vals.get("groups_id") {
        set_groups(c, uid, g)?;
    }
    Ok(())
}

fn ids(v: &Value) -> Vec<i32> {
    match v {
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_i64)
            .map(|i| i as i32)
            .collect(),
        Value::Number(n) => n.as_i64().map(|i| vec![i as i32]).unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn create(c: &mut Client, m: &Model, vals: &Value) -> Result<Value, Fault> {
    let text = |f: &str| vals[f].as_str().map(str::to_string);
    let id: i32 = match m.name {
        "res.users" => {
            let login = text("login")
                .ok_or_else(|| ("odoo.exceptions.ValidationError", "login is required".into()))?;
            let exists = c
                .query_opt("SELECT 1 FROM res_users WHERE login = $1", &[&login])
                .map_err(db)?;
            if exists.is_some() {
                return Err((
                    "odoo.exceptions.ValidationError",
                    "You can not have two users with the same login!".into(),
                ));
            }
            let id: i32 = c
                .query_one(
                    "INSERT INTO res_users (login, active) VALUES ($1, true) RETURNING id",
                    &[&login],
                )
                .map_err(db)?
                .get(0);
            write_user(c, id, vals)?;
            id
        }
        "res.partner" => c
            .query_one(
                "INSERT INTO res_partner (name) VALUES ($1) RETURNING id",
                &[&text("name").unwrap_or_default()],
            )
            .map_err(db)?
            .get(0),
        "product.product" => c
            .query_one(
                "INSERT INTO product_product (name, default_code, purchase_ok) VALUES ($1, $2, $3) RETURNING id",
                &[
                    &text("name").unwrap_or_default(),
                    &text("default_code"),
                    &vals["purchase_ok"].as_bool().unwrap_or(true),
                ],
            )
            .map_err(db)?
            .get(0),
        "purchase.order" => {
            let partner = vals["partner_id"].as_i64().unwrap_or(0) as i32;
            let mut tx = c.transaction().map_err(db)?;
            let id: i32 = tx
                .query_one(
                    "INSERT INTO purchase_order (name, partner_id) VALUES ('', $1) RETURNING id",
                    &[&partner],
                )
                .map_err(db)?
                .get(0);
            let mut total = 0.0;
            for l in vals["order_line"].as_array().into_iter().flatten() {
                let v = &l[2];
                let (p, qty, price) = (
                    v["product_id"].as_i64().unwrap_or(0) as i32,
                    v["product_qty"].as_f64().unwrap_or(1.0),
                    v["price_unit"].as_f64().unwrap_or(0.0),
                );
                tx.execute(
                    "INSERT INTO purchase_order_line (order_id, product_id, product_qty, price_unit)
                     VALUES ($1, $2, $3, $4)",
                    &[&id, &p, &qty, &price],
                )
                .map_err(db)?;
                total += qty * price;
            }
            tx.execute(
                "UPDATE purchase_order SET name = 'P' || lpad(id::text, 5, '0'), amount_total = $2 WHERE id = $1",
                &[&id, &total],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            id
        }
        _ => return Err(access(&format!("create '{}' records", m.name))),
    };
    Ok(json!(id))
}

/// One `call_kw` as user `uid`.
pub fn call(c: &mut Client, uid: i32, params: &Value) -> Result<Value, Fault> {
    let name = params["model"].as_str().unwrap_or_default();
    let method = params["method"].as_str().unwrap_or_default();
    let m = model(c, name)?;
    let args = &params["args"];
    match method {
        "search_read" => {
            if !has_group(c, uid, m.read)? {
                return Err(access(&format!("access '{}' records", m.name)));
            }
            search_read(c, m, params)
        }
        "create" => {
            if !has_group(c, uid, m.create)? {
                return Err(access(&format!("create '{}' records", m.name)));
            }
            match &args[0] {
                Value::Array(list) => {
                    let mut out = Vec::new();
                    for v in list {
                        out.push(create(c, m, v)?);
                    }
                    Ok(Value::Array(out))
                }
                v => create(c, m, v),
            }
        }
        "write" if m.name == "res.users" => {
            if !has_group(c, uid, m.create)? {
                return Err(access("modify 'res.users' records"));
            }
            for id in ids(&args[0]) {
                write_user(c, id, &args[1])?;
            }
            Ok(json!(true))
        }
        "button_confirm" | "button_cancel" if m.name == "purchase.order" => {
            if !has_group(c, uid, m.create)? {
                return Err(access("modify 'purchase.order' records"));
            }
            let (from, to) = if method == "button_confirm" {
                (vec!["draft", "sent"], "purchase")
            } else {
                (vec!["draft", "sent", "to approve", "purchase"], "cancel")
            };
            for id in ids(&args[0]) {
                let state: Option<String> = c
                    .query_opt("SELECT state FROM purchase_order WHERE id = $1", &[&id])
                    .map_err(db)?
                    .map(|r| r.get(0));
                match state {
                    Some(s) if from.contains(&s.as_str()) => {
                        c.execute(
                            "UPDATE purchase_order SET state = $1 WHERE id = $2",
                            &[&to, &id],
                        )
                        .map_err(db)?;
                    }
                    Some(s) => {
                        return Err((
                            "odoo.exceptions.UserError",
                            format!("{method}: order {id} is in state {s}"),
                        ))
                    }
                    None => {
                        return Err((
                            "odoo.exceptions.MissingError",
                            "Record does not exist or has been deleted.".into(),
                        ))
                    }
                }
            }
            Ok(if method == "button_confirm" {
                json!(true)
            } else {
                Value::Null
            })
        }
        "unlink" if m.name == "purchase.order" => {
            if !has_group(c, uid, m.create)? {
                return Err(access("delete 'purchase.order' records"));
            }
            for id in ids(&args[0]) {
                let state: Option<String> = c
                    .query_opt("SELECT state FROM purchase_order WHERE id = $1", &[&id])
                    .map_err(db)?
                    .map(|r| r.get(0));
                if state.as_deref() != Some("cancel") {
                    // Odoo's _unlink_if_cancelled.
                    return Err((
                        "odoo.exceptions.UserError",
                        "In order to delete a purchase order, you must cancel it first.".into(),
                    ));
                }
                c.execute(
                    "DELETE FROM purchase_order_line WHERE order_id = $1",
                    &[&id],
                )
                .map_err(db)?;
                c.execute("DELETE FROM purchase_order WHERE id = $1", &[&id])
                    .map_err(db)?;
            }
            Ok(json!(true))
        }
        _ => Err((
            "builtins.AttributeError",
            format!("The method '{method}' does not exist on the model '{name}'"),
        )),
    }
}

/// A one-page PDF naming `title`: what `/report/pdf/...` answers.
pub fn pdf(title: &str) -> Vec<u8> {
    let text: String = title
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || " -_/.".contains(*c))
        .collect();
    let content = format!("BT /F1 12 Tf 72 720 Td ({text}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_string(),
        format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}
