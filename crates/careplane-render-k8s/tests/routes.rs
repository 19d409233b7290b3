//! Traefik routes, cert-manager certificates, CloudNativePG backups and the
//! PgBouncer pooler: what each environment and cluster gets, checked by
//! evaluating the rendered route rules for real requests.

mod common;

use std::fs;

use careplane_model::ingress_policy as policy;
use careplane_render_k8s::{check_tree, render, write_tree, RenderError, Tree};
use serde::Deserialize;
use serde_json::Value;

fn doc(tree: &Tree, file: &str) -> Value {
    let text = tree
        .files
        .get(file)
        .unwrap_or_else(|| panic!("{file} is not rendered"));
    Value::deserialize(serde_yaml_ng::Deserializer::from_str(text)).unwrap()
}

/// A request as Traefik's rule matchers see it.
struct Req<'a> {
    host: &'a str,
    method: &'a str,
    path: &'a str,
}

/// Evaluates the rule language careplane renders (`Host`, `Path`,
/// `PathPrefix`, `Method`, `&&`, `||`, parentheses), with Traefik's
/// precedence (`&&` binds tighter). Anything else fails the test.
fn eval(rule: &str, r: &Req) -> bool {
    struct P<'s> {
        s: &'s str,
    }
    impl P<'_> {
        fn ws(&mut self) {
            self.s = self.s.trim_start();
        }
        fn eat(&mut self, t: &str) -> bool {
            self.ws();
            if let Some(rest) = self.s.strip_prefix(t) {
                self.s = rest;
                true
            } else {
                false
            }
        }
        fn or(&mut self, r: &Req) -> bool {
            let mut v = self.and(r);
            while self.eat("||") {
                v |= self.and(r);
            }
            v
        }
        fn and(&mut self, r: &Req) -> bool {
            let mut v = self.atom(r);
            while self.eat("&&") {
                v &= self.atom(r);
            }
            v
        }
        fn atom(&mut self, r: &Req) -> bool {
            if self.eat("(") {
                let v = self.or(r);
                assert!(self.eat(")"), "unbalanced rule near {:?}", self.s);
                return v;
            }
            self.ws();
            let open = self.s.find("(`").expect("a matcher");
            let name = &self.s[..open];
            let rest = &self.s[open + 2..];
            let close = rest.find("`)").expect("a closed matcher");
            let arg = &rest[..close];
            self.s = &rest[close + 2..];
            match name {
                "Host" => r.host == arg,
                "Path" => r.path == arg,
                "PathPrefix" => r.path.starts_with(arg),
                "Method" => r.method == arg,
                other => panic!("unexpected matcher {other}"),
            }
        }
    }
    let mut p = P { s: rule };
    let v = p.or(r);
    assert!(p.s.trim().is_empty(), "trailing rule text {:?}", p.s);
    v
}

/// The route Traefik picks for `r`: the matching one of highest priority.
fn route_for<'v>(ingress_route: &'v Value, r: &Req) -> Option<&'v Value> {
    ingress_route["spec"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rt| eval(rt["match"].as_str().unwrap(), r))
        .max_by_key(|rt| rt["priority"].as_u64().unwrap())
}

fn middlewares(route: &Value) -> Vec<&str> {
    route["middlewares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect()
}

#[test]
fn every_environment_host_is_routed_with_the_shared_policy() {
    let specs = common::example();
    let tree = render(&specs, &common::opts()).unwrap();
    let mut checked = 0;
    for t in &specs.tenants {
        for e in &t.spec.environments {
            let dir = format!("tenants/{}/{}", t.metadata.name, e.name);
            let host = format!("{}.{}.careplane.localhost", e.name, t.metadata.name);
            let ir = doc(&tree, &format!("{dir}/ingressroute-odoo.yaml"));
            assert_eq!(ir["spec"]["entryPoints"], serde_json::json!(["websecure"]));
            let req = |method, path| Req {
                host: &host,
                method,
                path,
            };
            let mut blocked: Vec<String> = policy::BLOCKED_PREFIXES
                .iter()
                .flat_map(|(p, _)| [p.to_string(), format!("{p}/anything")])
                .collect();
            blocked.extend(["/jsonrpc".to_string(), "/web/database/manager".to_string()]);
            for path in &blocked {
                let rt = route_for(&ir, &req("POST", path)).unwrap();
                assert_eq!(middlewares(rt), ["deny"], "{dir}: {path}");
            }
            // Whole segments only, as the local proxy matches them.
            for path in ["/web/databases", "/xmlrpc/2/object", "/xmlrpc/2/dbx", "/"] {
                let rt = route_for(&ir, &req("POST", path)).unwrap();
                assert_eq!(
                    middlewares(rt),
                    ["security-headers", "rate-limit"],
                    "{dir}: {path}"
                );
                assert_eq!(rt["services"][0]["name"], "odoo-http", "{dir}: {path}");
            }
            let login = route_for(&ir, &req("POST", policy::LOGIN_FORM)).unwrap();
            assert!(middlewares(login).contains(&"login-rate-limit"), "{dir}");
            let json_login = route_for(&ir, &req("POST", policy::LOGIN_JSON)).unwrap();
            assert!(
                middlewares(json_login).contains(&"login-rate-limit"),
                "{dir}"
            );
            // Showing the form is not an attempt.
            let form = route_for(&ir, &req("GET", policy::LOGIN_FORM)).unwrap();
            assert!(!middlewares(form).contains(&"login-rate-limit"), "{dir}");
            let ws = route_for(&ir, &req("GET", policy::WEBSOCKET_PATH)).unwrap();
            assert_eq!(ws["services"][0]["name"], "odoo-websocket", "{dir}");
            assert_eq!(ws["services"][0]["port"], 8072, "{dir}");
            // Another host's requests never match.
            assert!(route_for(
                &ir,
                &Req {
                    host: "other.example.org",
                    method: "GET",
                    path: "/"
                }
            )
            .is_none());

            // Every referenced middleware and service is in the folder.
            for rt in ir["spec"]["routes"].as_array().unwrap() {
                for m in middlewares(rt) {
                    let mw = doc(&tree, &format!("{dir}/middleware-{m}.yaml"));
                    assert_eq!(mw["metadata"]["name"], m);
                }
                let svc = rt["services"][0]["name"].as_str().unwrap();
                let s = doc(&tree, &format!("{dir}/service-{svc}.yaml"));
                assert_eq!(s["spec"]["ports"][0]["port"], rt["services"][0]["port"]);
            }
            let deny = doc(&tree, &format!("{dir}/middleware-deny.yaml"));
            assert_eq!(
                deny["spec"]["ipAllowList"]["sourceRange"],
                serde_json::json!(["255.255.255.255/32"])
            );
            let headers = doc(&tree, &format!("{dir}/middleware-security-headers.yaml"));
            let h = &headers["spec"]["headers"];
            assert_eq!(h["contentSecurityPolicy"], policy::CONTENT_SECURITY_POLICY);
            assert_eq!(h["stsSeconds"], policy::HSTS_MAX_AGE_SECS);
            assert_eq!(h["contentTypeNosniff"], true);
            assert_eq!(h["referrerPolicy"], policy::REFERRER_POLICY);
            // Rates: the same tokens per second as the local proxy's buckets.
            for (file, rate) in [
                ("rate-limit", policy::DEFAULT_RATE),
                ("login-rate-limit", policy::LOGIN_RATE),
            ] {
                let rl = &doc(&tree, &format!("{dir}/middleware-{file}.yaml"))["spec"]["rateLimit"];
                let per = match rl["period"].as_str().unwrap() {
                    "1s" => 1.0,
                    "1m" => 60.0,
                    p => panic!("{p}"),
                };
                let per_second = rl["average"].as_f64().unwrap() / per;
                assert!((per_second - rate.per_second).abs() < 1e-9, "{dir} {file}");
                assert_eq!(rl["burst"], rate.burst, "{dir} {file}");
            }

            let cert = doc(&tree, &format!("{dir}/certificate-odoo-tls.yaml"));
            assert_eq!(cert["spec"]["dnsNames"], serde_json::json!([host]));
            assert_eq!(cert["spec"]["secretName"], ir["spec"]["tls"]["secretName"]);
            assert_eq!(cert["spec"]["issuerRef"]["name"], "letsencrypt");
            assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
            // No admin allow-list unless the Platform names one.
            assert!(!tree
                .files
                .contains_key(&format!("{dir}/middleware-admin-allow.yaml")));
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked}");
}

#[test]
fn admin_paths_answer_only_the_allow_list_and_spec_names_win() {
    let mut specs = common::example();
    let k = specs.platform.spec.kubernetes.as_mut().unwrap();
    k.admin_allow = vec!["10.20.0.0/16".into()];
    k.admin_paths = vec!["/odoo/settings".into()];
    k.ingress_class = Some("traefik-internal".into());
    k.storage_classes = Some(careplane_spec::kubernetes::StorageClasses {
        filestore: Some("cephfs".into()),
        postgres: Some("fast-ssd".into()),
    });
    let tree = render(&specs, &common::opts()).unwrap();
    let dir = "tenants/stmarys/production";
    // Storage classes from the spec, not the render options' defaults.
    assert_eq!(
        doc(&tree, &format!("{dir}/pvc-odoo-filestore.yaml"))["spec"]["storageClassName"],
        "cephfs"
    );
    assert_eq!(
        doc(&tree, "postgres/shared/cluster.yaml")["spec"]["storage"]["storageClass"],
        "fast-ssd"
    );
    let ir = doc(&tree, &format!("{dir}/ingressroute-odoo.yaml"));
    assert_eq!(
        ir["metadata"]["annotations"]["kubernetes.io/ingress.class"],
        "traefik-internal"
    );
    let host = "production.stmarys.careplane.localhost";
    for path in ["/odoo/settings", "/odoo/settings/users"] {
        let rt = route_for(
            &ir,
            &Req {
                host,
                method: "GET",
                path,
            },
        )
        .unwrap();
        assert_eq!(middlewares(rt)[0], "admin-allow", "{path}");
    }
    let rt = route_for(
        &ir,
        &Req {
            host,
            method: "GET",
            path: "/odoo/settingsx",
        },
    )
    .unwrap();
    assert!(!middlewares(rt).contains(&"admin-allow"));
    let mw = doc(&tree, &format!("{dir}/middleware-admin-allow.yaml"));
    assert_eq!(
        mw["spec"]["ipAllowList"]["sourceRange"],
        serde_json::json!(["10.20.0.0/16"])
    );
}

#[test]
fn no_routes_without_an_ingress_section() {
    let mut specs = common::example();
    specs.platform.spec.ingress = None;
    let tree = render(&specs, &common::opts()).unwrap();
    assert!(!tree.files.keys().any(|f| f.contains("ingressroute")
        || f.contains("middleware-")
        || f.contains("certificate-")));
}

#[test]
fn check_names_the_field_of_a_hand_edited_ingress_route() {
    let tree = render(&common::example(), &common::opts()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_tree(&tree, dir.path()).unwrap();
    let rel = "tenants/stmarys/production/ingressroute-odoo.yaml";
    let p = dir.path().join(rel);
    let text = fs::read_to_string(&p).unwrap();
    // Someone drops the login limit from the login route.
    let edited = text.replacen("    - name: login-rate-limit\n", "", 1);
    assert_ne!(edited, text);
    fs::write(&p, edited).unwrap();
    let drifts: Vec<String> = check_tree(&tree, dir.path())
        .unwrap()
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(
        drifts,
        [format!(
            "{rel}: IngressRoute/odoo: spec.routes[1].middlewares: expected a list of 3, found a list of 2"
        )]
    );
}

#[test]
fn production_without_backups_is_refused() {
    let mut specs = common::example();
    specs.platform.spec.kubernetes.as_mut().unwrap().backups = None;
    let err = render(&specs, &common::opts()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RenderError::NoBackups { .. }), "{msg}");
    assert!(
        msg.starts_with("environment citylab/production (production): its PostgreSQL cluster would have no backups"),
        "{msg}"
    );
    assert!(msg.contains("spec.kubernetes.backups"), "{msg}");
}

#[test]
fn clusters_archive_wal_and_back_up_on_each_tenants_schedule() {
    let specs = common::example();
    let tree = render(&specs, &common::opts()).unwrap();
    for scope in ["shared", "regional", "citylab"] {
        let dir = format!("postgres/{scope}");
        let cluster = doc(&tree, &format!("{dir}/cluster.yaml"));
        let plugin = &cluster["spec"]["plugins"][0];
        assert_eq!(plugin["name"], "barman-cloud.cloudnative-pg.io");
        assert_eq!(plugin["isWALArchiver"], true);
        let store_name = plugin["parameters"]["barmanObjectName"].as_str().unwrap();
        let store = doc(&tree, &format!("{dir}/objectstore-{store_name}.yaml"));
        assert_eq!(store["kind"], "ObjectStore");
        assert_eq!(
            store["spec"]["configuration"]["destinationPath"],
            format!("s3://hospital-group-backups/careplane/{scope}")
        );
        // Credentials by reference, fetched from the store.
        let creds = store["spec"]["configuration"]["s3Credentials"]["accessKeyId"]["name"]
            .as_str()
            .unwrap();
        let es = doc(&tree, &format!("{dir}/externalsecret-{creds}.yaml"));
        assert_eq!(es["spec"]["target"]["name"], creds);

        // One ScheduledBackup per BackupPolicy of the cluster's tenants.
        let mut expected: Vec<(String, String, String)> = Vec::new();
        for t in &specs.tenants {
            if careplane_model::pg_scope(&t.metadata.name, &t.spec) != scope {
                continue;
            }
            let tier = specs.tier_of(&t.spec).unwrap();
            let p = specs
                .backup_policy(tier.spec.backup_policy.as_deref().unwrap())
                .unwrap();
            expected.push((
                format!("{dir}/scheduledbackup-{}.yaml", p.metadata.name),
                format!("0 {}", p.spec.schedule),
                careplane_render_k8s_window(&p.spec.retention),
            ));
        }
        expected.sort();
        expected.dedup();
        let rendered: Vec<&String> = tree
            .files
            .keys()
            .filter(|f| f.starts_with(&format!("{dir}/scheduledbackup-")))
            .collect();
        assert_eq!(rendered.len(), expected.len(), "{scope}: {rendered:?}");
        for (file, schedule, _) in &expected {
            let sb = doc(&tree, file);
            assert_eq!(sb["spec"]["schedule"], schedule.as_str(), "{file}");
            assert_eq!(sb["spec"]["method"], "plugin");
            assert_eq!(sb["spec"]["cluster"]["name"], cluster["metadata"]["name"]);
            // CloudNativePG's cron: six fields, seconds first.
            assert_eq!(schedule.split_whitespace().count(), 6);
        }
        // The longest window any of its tenants' policies asks for.
        let longest = expected
            .iter()
            .map(|(_, _, w)| w.clone())
            .max_by_key(|w| days(w))
            .unwrap();
        assert_eq!(
            store["spec"]["retentionPolicy"],
            longest.as_str(),
            "{scope}"
        );
    }
}

fn days(w: &str) -> u64 {
    let (n, u) = w.split_at(w.len() - 1);
    n.parse::<u64>().unwrap()
        * match u {
            "m" => 31,
            "w" => 7,
            _ => 1,
        }
}

/// The recovery window a retention should become, computed here
/// independently of the renderer: the longest horizon its counts cover.
fn careplane_render_k8s_window(r: &careplane_spec::Retention) -> String {
    let mut best = (0, String::new());
    for (n, unit, d) in [(r.daily, "d", 1), (r.weekly, "w", 7), (r.monthly, "m", 31)] {
        if n > 0 && u64::from(n) * d > best.0 {
            best = (u64::from(n) * d, format!("{n}{unit}"));
        }
    }
    best.1
}

#[test]
fn odoo_connects_through_a_session_mode_pooler_it_can_verify() {
    let tree = render(&common::example(), &common::opts()).unwrap();
    for scope in ["shared", "regional", "citylab"] {
        let pooler = doc(&tree, &format!("postgres/{scope}/pooler.yaml"));
        assert_eq!(pooler["spec"]["pgbouncer"]["poolMode"], "session");
        assert_eq!(pooler["spec"]["type"], "rw");
    }
    let conf = doc(
        &tree,
        "tenants/regional/production/configmap-odoo-config.yaml",
    );
    let web = conf["data"]["odoo-web.conf"].as_str().unwrap();
    let host = web
        .lines()
        .find_map(|l| l.strip_prefix("db_host = "))
        .unwrap();
    let pooler = doc(&tree, "postgres/regional/pooler.yaml");
    assert_eq!(
        host,
        format!(
            "{}.careplane-pg-regional.svc",
            pooler["metadata"]["name"].as_str().unwrap()
        )
    );
    assert!(web.contains("db_sslmode = verify-full"));
    // verify-full holds: the host is in the server certificate.
    let cluster = doc(&tree, "postgres/regional/cluster.yaml");
    let sans = cluster["spec"]["certificates"]["serverAltDNSNames"]
        .as_array()
        .unwrap();
    assert!(sans.iter().any(|s| s == host), "{sans:?}");
}

#[test]
fn dedicated_env_tenants_run_on_their_own_node_pool() {
    let specs = common::example();
    let tree = render(&specs, &common::opts()).unwrap();
    let pool = serde_json::json!({"careplane.dev/pool": "regional"});
    let toleration = serde_json::json!([{"key": "careplane.dev/pool", "operator": "Equal",
        "value": "regional", "effect": "NoSchedule"}]);
    let mut pods = 0;
    for (file, text) in &tree.files {
        let o = Value::deserialize(serde_yaml_ng::Deserializer::from_str(text));
        let Ok(o) = o else { continue };
        let spec = match o["kind"].as_str() {
            Some("Deployment" | "Job" | "StatefulSet") => &o["spec"]["template"]["spec"],
            Some("Cluster") => &o["spec"]["affinity"],
            _ => continue,
        };
        // regional is dedicated-env: its Odoo, PostgreSQL and Redis.
        let own = file.starts_with("tenants/regional/")
            || file.starts_with("postgres/regional/")
            || file.starts_with("redis/regional/");
        if own {
            assert_eq!(spec["nodeSelector"], pool, "{file}");
            assert_eq!(spec["tolerations"], toleration, "{file}");
            pods += 1;
        } else {
            assert!(spec.get("nodeSelector").is_none(), "{file}");
            assert!(spec.get("tolerations").is_none(), "{file}");
        }
    }
    // 3 environments × (web, cron, init) + the cluster + Redis.
    assert_eq!(pods, 11);

    let mut off = specs.clone();
    off.platform
        .spec
        .kubernetes
        .as_mut()
        .unwrap()
        .dedicated_node_pools = false;
    let tree = render(&off, &common::opts()).unwrap();
    assert!(!tree
        .files
        .values()
        .any(|t| t.contains("careplane.dev/pool")));
}

#[test]
fn production_pods_are_scheduled_ahead_of_the_rest() {
    let tree = render(&common::example(), &common::opts()).unwrap();
    let mut classes = std::collections::BTreeSet::new();
    for (file, text) in &tree.files {
        let Ok(o) = Value::deserialize(serde_yaml_ng::Deserializer::from_str(text)) else {
            continue;
        };
        if !matches!(o["kind"].as_str(), Some("Deployment" | "Job")) {
            continue;
        }
        let kind = doc(
            &tree,
            &format!("{}/namespace.yaml", file.rsplit_once('/').unwrap().0),
        )["metadata"]["labels"]["careplane.dev/environment-kind"]
            .as_str()
            .unwrap()
            .to_string();
        let class = o["spec"]["template"]["spec"]["priorityClassName"]
            .as_str()
            .unwrap()
            .to_string();
        let expected = if matches!(kind.as_str(), "production" | "dr") {
            "careplane-production"
        } else {
            "careplane-non-production"
        };
        assert_eq!(class, expected, "{file}");
        classes.insert(class);
    }
    let value = |name: &str| {
        doc(&tree, &format!("platform/priorityclass-{name}.yaml"))["value"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(classes.len(), 2);
    assert!(value("careplane-production") > value("careplane-non-production"));
}

#[test]
fn smtp_egress_only_to_the_named_relay() {
    let tree = render(&common::example(), &common::opts()).unwrap();
    let envs = tree
        .files
        .keys()
        .filter(|f| f.starts_with("tenants/") && f.ends_with("/namespace.yaml"))
        .count();
    let policies: Vec<&String> = tree
        .files
        .keys()
        .filter(|f| f.ends_with("/networkpolicy-odoo-to-smtp.yaml"))
        .collect();
    assert_eq!(policies.len(), envs);
    let p = doc(&tree, policies[0]);
    assert_eq!(
        p["spec"]["egress"],
        serde_json::json!([{"to": [{"ipBlock": {"cidr": "192.0.2.25/32"}}],
            "ports": [{"protocol": "TCP", "port": 587}]}])
    );
    assert_eq!(p["spec"]["policyTypes"], serde_json::json!(["Egress"]));

    let mut specs = common::example();
    specs.platform.spec.kubernetes.as_mut().unwrap().smtp = None;
    let tree = render(&specs, &common::opts()).unwrap();
    assert!(!tree.files.keys().any(|f| f.contains("smtp")));
}

const COSIGN_PUB: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8nXRh950IZbRj8Ra/N9sbqOPZrfM\n5/KAQN0/KjHcorm/J5yctVd7iEcnessRQjU917hmKO6JWVGHpDguIyakZA==\n-----END PUBLIC KEY-----\n";

#[test]
fn image_signatures_are_enforced_by_kyverno_when_asked() {
    let mut specs = common::example();
    specs
        .platform
        .spec
        .kubernetes
        .as_mut()
        .unwrap()
        .image_signatures = None;
    let tree = render(&specs, &common::opts()).unwrap();
    assert!(!tree.files.keys().any(|f| f.contains("clusterpolicy")));

    // The example names the key.
    let tree = render(&common::example(), &common::opts()).unwrap();
    let p = doc(&tree, "platform/clusterpolicy-verify-images.yaml");
    assert_eq!(p["kind"], "ClusterPolicy");
    let rules = p["spec"]["rules"].as_array().unwrap();
    let verify = &rules[1]["verifyImages"][0];
    assert_eq!(
        verify["attestors"][0]["entries"][0]["keys"]["publicKeys"],
        COSIGN_PUB.trim()
    );
    assert_eq!(verify["verifyDigest"], true);
    assert_eq!(
        rules[0]["validate"]["pattern"]["spec"]["containers"][0]["image"],
        "*@sha256:*"
    );
    // It selects the pods careplane renders with its own images.
    for r in rules {
        let sel = &r["match"]["any"][0]["resources"];
        assert_eq!(
            sel["namespaceSelector"]["matchLabels"]["app.kubernetes.io/managed-by"],
            "careplane"
        );
        assert_eq!(
            sel["selector"]["matchExpressions"][0]["values"],
            serde_json::json!(["odoo", "redis"])
        );
    }
    let k = doc(&tree, "platform/kustomization.yaml");
    assert!(k["resources"]
        .as_array()
        .unwrap()
        .contains(&Value::from("clusterpolicy-verify-images.yaml")));
}
