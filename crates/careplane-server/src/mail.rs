//! E-mail notifications over SMTP (lettre; STARTTLS, implicit TLS or, on loopback only,
//! none). The message is plain text of the incident's operational facts: no patient data
//! exists in an incident, and no secret (the SMTP password comes from the environment
//! variable the channel names, at send time, and is never part of a message or an error).

use std::time::Duration;

use careplane_sla::incident::Reason;
use careplane_sla::{DueNotification, Impact, Incident};
use careplane_spec::{SmtpChannel, SmtpTls};
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

fn impact(i: &Incident) -> &'static str {
    match i.impact {
        Impact::Down => "down",
        Impact::Degraded => "degraded",
    }
}

/// `[careplane P1] stmarys/production down`, `... resolved` once it is over.
pub fn subject(i: &Incident, n: &DueNotification) -> String {
    let what = if matches!(n.reason, Reason::Resolved) {
        "resolved"
    } else {
        impact(i)
    };
    let exec = if matches!(n.reason, Reason::Executive) {
        " (executive notice)"
    } else {
        ""
    };
    format!(
        "[careplane {:?}] {}/{} {what}{exec}",
        i.severity, i.tenant, i.environment
    )
}

/// The plain-text body: the incident's facts and how to acknowledge it.
pub fn body(i: &Incident, n: &DueNotification) -> String {
    let why = match &n.reason {
        Reason::Step { step } => format!("escalation step {}", step + 1),
        Reason::Repeat { step, repeat } => {
            format!(
                "escalation step {}, repeat {repeat}: not acknowledged",
                step + 1
            )
        }
        Reason::Executive => {
            "executive notice: the outage has lasted past the tier's threshold".to_string()
        }
        Reason::Resolved => "the incident is resolved".to_string(),
    };
    let mut b = format!(
        "Incident {id}\n\n\
         Tenant:       {tenant}\n\
         Environment:  {env} ({kind:?})\n\
         Severity:     {sev:?}\n\
         Impact:       {impact}\n\
         What failed:  the {probe} probe, failing since {started}\n\
         Opened at:    {opened}\n",
        id = i.id,
        tenant = i.tenant,
        env = i.environment,
        kind = i.environment_kind,
        sev = i.severity,
        impact = impact(i),
        probe = i.probe,
        started = i.started_at,
        opened = i.opened_at,
    );
    if let Some(r) = i.restored_at {
        b.push_str(&format!("Restored at:  {r}\n"));
    }
    match (&i.acknowledged, &i.resolved) {
        (_, Some(r)) => b.push_str(&format!(
            "Resolved at:  {} by {}: {}\n",
            r.at, r.actor, r.summary
        )),
        (Some(a), None) => b.push_str(&format!("Acknowledged: {} by {}\n", a.at, a.actor)),
        (None, None) => b.push_str(&format!(
            "\nNot acknowledged. To acknowledge (stops the escalation):\n\
             \x20 careplane incident ack {id}\n\
             or POST /v1/incidents/{id}/ack with an operate token.\n",
            id = i.id
        )),
    }
    b.push_str(&format!(
        "\nSent because: {why} (notification {}).\n",
        n.key
    ));
    b
}

fn mailbox(what: &str, a: &str) -> Result<Mailbox, String> {
    a.parse::<Mailbox>()
        .map_err(|e| format!("{what} address {a:?}: {e}"))
}

/// Sends one message through `c` within `timeout`. The error names the relay and what it
/// answered (lettre's error carries the SMTP reply code and text).
pub async fn send(
    c: &SmtpChannel,
    subject: &str,
    body: String,
    timeout: Duration,
) -> Result<(), String> {
    let (host, port) = c
        .host_port()
        .ok_or_else(|| format!("smtp server {:?} is not host[:port]", c.server))?;
    let at = format!("smtp {host}:{port}");
    let mut m = Message::builder()
        .from(mailbox("from", &c.from)?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for to in &c.to {
        m = m.to(mailbox("to", to)?);
    }
    let message = m
        .body(body)
        .map_err(|e| format!("{at}: building the message: {e}"))?;
    // The server name in the certificate is the host as written (IP addresses too).
    let tls = |h: &str| tls_parameters(c, h).map_err(|e| format!("{at}: {e}"));
    let tls = match c.tls {
        SmtpTls::Starttls => Tls::Required(tls(&host)?),
        SmtpTls::Implicit => Tls::Wrapper(tls(&host)?),
        SmtpTls::None => {
            // validate refuses this off loopback; checked again so that no spec path
            // can send a password in clear over the network.
            if !c.is_loopback() {
                return Err(format!("{at}: tls none is only allowed on loopback"));
            }
            Tls::None
        }
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
        .port(port)
        .tls(tls)
        .timeout(Some(timeout));
    if let (Some(user), Some(env)) = (&c.username, &c.password_env) {
        let password = std::env::var(env).map_err(|_| {
            format!("{at}: environment variable {env} (the password of {user}) is not set")
        })?;
        b = b.credentials(Credentials::new(user.clone(), password));
    }
    let transport = b.build();
    match tokio::time::timeout(timeout, transport.send(message)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{at}: {}", describe(&e))),
        Err(_) => Err(format!("{at}: no answer within {timeout:?}")),
    }
}

/// TLS towards the relay at `host`: the public roots compiled in, or only the CAs of the
/// channel's `caFile` (an internal relay's own CA; the public roots then are not trusted,
/// so a certificate from elsewhere is refused).
fn tls_parameters(c: &SmtpChannel, host: &str) -> Result<TlsParameters, String> {
    let mut b = TlsParameters::builder(host.to_string());
    if let Some(path) = &c.ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("reading caFile {}: {e}", path.display()))?;
        // lettre takes every certificate of the PEM; one without any is a mistake.
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "caFile {} holds no PEM certificate",
                path.display()
            ));
        }
        let cert = lettre::transport::smtp::client::Certificate::from_pem(&pem)
            .map_err(|e| format!("caFile {}: {e}", path.display()))?;
        b = b
            .certificate_store(lettre::transport::smtp::client::CertificateStore::None)
            .add_root_certificate(cert);
    }
    b.build().map_err(|e| format!("TLS setup: {e}"))
}

/// lettre's error with its source chain (the OS error of a refused connection, the
/// server's reply of a rejected command).
fn describe(e: &lettre::transport::smtp::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use careplane_sla::incident::ActorTime;
    use careplane_sla::{EnvironmentKind, Severity};

    fn incident() -> Incident {
        serde_json::from_value(serde_json::json!({
            "id": "stmarys-production-1", "tenant": "stmarys", "environment": "production",
            "environmentKind": "production", "probe": "odoo-login", "impact": "down",
            "severity": "P1", "startedAt": "2026-03-10T10:00:00Z",
            "openedAt": "2026-03-10T10:02:00Z", "restoredAt": null, "acknowledged": null,
            "resolved": null, "notes": [], "notifications": []
        }))
        .unwrap()
    }

    fn due(reason: Reason) -> DueNotification {
        DueNotification {
            key: "step-0".into(),
            due_at: "2026-03-10T10:02:00Z".parse().unwrap(),
            recipients: vec!["mail".into()],
            reason,
        }
    }

    #[test]
    fn subject_and_body_carry_the_incident_and_how_to_acknowledge() {
        let i = incident();
        assert_eq!(i.environment_kind, EnvironmentKind::Production);
        assert_eq!(i.severity, Severity::P1);
        let n = due(Reason::Step { step: 0 });
        assert_eq!(subject(&i, &n), "[careplane P1] stmarys/production down");
        let b = body(&i, &n);
        for want in [
            "Incident stmarys-production-1",
            "Tenant:       stmarys",
            "What failed:  the odoo-login probe, failing since 2026-03-10T10:00:00Z",
            "Opened at:    2026-03-10T10:02:00Z",
            "careplane incident ack stmarys-production-1",
            "escalation step 1 (notification step-0)",
        ] {
            assert!(b.contains(want), "no {want:?} in {b}");
        }
        assert_eq!(
            subject(&i, &due(Reason::Executive)),
            "[careplane P1] stmarys/production down (executive notice)"
        );
        let mut acked = i.clone();
        acked.acknowledged = Some(ActorTime {
            actor: "token:on-call".into(),
            at: "2026-03-10T10:05:00Z".parse().unwrap(),
        });
        let b = body(&acked, &due(Reason::Repeat { step: 0, repeat: 1 }));
        assert!(
            b.contains("Acknowledged: 2026-03-10T10:05:00Z by token:on-call"),
            "{b}"
        );
        assert!(!b.contains("careplane incident ack"), "{b}");
        assert_eq!(
            subject(&i, &due(Reason::Resolved)),
            "[careplane P1] stmarys/production resolved"
        );
    }

    #[tokio::test]
    async fn no_clear_text_relay_off_loopback_whatever_the_spec_says() {
        let c = SmtpChannel {
            server: "smtp.example.org:25".into(),
            tls: SmtpTls::None,
            from: "careplane@example.org".into(),
            to: vec!["oncall@example.org".into()],
            username: None,
            password_env: None,
            ca_file: None,
        };
        let e = send(&c, "s", "b".into(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.contains("tls none is only allowed on loopback"), "{e}");
    }
}
