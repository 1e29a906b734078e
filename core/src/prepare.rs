//! What happens to a decoded batch before any pipeline sees it: claim-check pointers are
//! redeemed ([`crate::claimcheck`]), then encrypted fields decrypted ([`crate::encryption`]).
//! A unit whose event cannot be had is taken out: retried (with the later units of its key) on
//! a transient error, faulted otherwise.

use std::sync::Arc;

use futures::stream::{self, StreamExt};
use tokio::sync::OnceCell;

use crate::claimcheck::ClaimCheckStore;
use crate::deadline::Deadline;
use crate::encryption::Envelope;
use crate::error::StepError;
use crate::event::Event;
use crate::settings::Settings;
use crate::sources::Decoded;

/// The stores a handler redeems and decrypts with.
#[derive(Debug)]
pub(crate) struct Prepare {
    claim_checks: Option<Arc<dyn ClaimCheckStore>>,
    envelope: Option<Envelope>,
    /// Made when the first encrypted event arrives, so its data keys stay cached for the
    /// handler's life.
    default_envelope: OnceCell<Envelope>,
}

impl Prepare {
    pub(crate) fn new(
        claim_checks: Option<Arc<dyn ClaimCheckStore>>,
        envelope: Option<Envelope>,
    ) -> Self {
        Prepare {
            claim_checks,
            envelope,
            default_envelope: OnceCell::new(),
        }
    }

    /// Redeems, then decrypts, before any pipeline runs.
    pub(crate) async fn prepare(
        &self,
        decoded: &mut Decoded,
        deadline: Deadline,
        settings: &Settings,
    ) {
        self.redeem(decoded, deadline, settings.parallel.max(1))
            .await;
        self.decrypt(decoded, deadline, settings).await;
    }

    /// Puts in place of each claim-check pointer the event it points to, before any pipeline
    /// runs; what is not redeemed by the deadline's cut is retried.
    async fn redeem(&self, decoded: &mut Decoded, deadline: Deadline, parallel: usize) {
        let pointers = decoded.pointers();
        if pointers.is_empty() {
            return;
        }
        let store: Arc<dyn ClaimCheckStore> = match &self.claim_checks {
            Some(store) => Arc::clone(store),
            None => Arc::new(crate::aws::s3().await.clone()),
        };
        let units: Vec<usize> = pointers.iter().map(|(u, _)| *u).collect();
        let redeem = stream::iter(pointers.into_iter().map(|(unit, pointer)| {
            let store = Arc::clone(&store);
            let event = decoded.units[unit].event();
            let (id, timestamp) = (event.id.clone(), event.timestamp);
            async move {
                let redeemed = match pointer {
                    Ok(p) => p.fetch(&*store).await.and_then(|json| {
                        crate::sources::parse_event(&json, &id, timestamp).map_err(|e| {
                            StepError::poison_msg(format!("claim check {}: {e}", p.key))
                                .named("ClaimCheckMalformed")
                        })
                    }),
                    Err(reason) => Err(StepError::poison_msg(reason).named("ClaimCheckMalformed")),
                };
                (unit, redeemed)
            }
        }))
        .buffered(parallel)
        .collect::<Vec<_>>();
        let results = by_the_cut(deadline, &units, "claim check not redeemed", redeem).await;
        decoded.replace_events(results);
    }

    /// Decrypts each event that carries an `eem`, before any pipeline runs (after claim checks
    /// are redeemed: the stored event is the encrypted one); what is not decrypted by the
    /// deadline's cut is retried.
    async fn decrypt(&self, decoded: &mut Decoded, deadline: Deadline, settings: &Settings) {
        let units = decoded.encrypted();
        if units.is_empty() {
            return;
        }
        let envelope = match &self.envelope {
            Some(envelope) => envelope.clone(),
            None => self
                .default_envelope
                .get_or_init(|| Envelope::from_settings(settings))
                .await
                .clone(),
        };
        let work: Vec<_> = units
            .iter()
            .map(|&unit| {
                let envelope = envelope.clone();
                let event = decoded.units[unit].event().clone();
                async move { (unit, decrypt_event(&envelope, event).await) }
            })
            .collect();
        let decrypt = stream::iter(work)
            .buffered(settings.parallel.max(1))
            .collect::<Vec<_>>();
        let results = by_the_cut(deadline, &units, "event not decrypted", decrypt).await;
        decoded.replace_events(results);
    }
}

/// The event with its encrypted fields restored, and those of its row images (a DynamoDB
/// change); each `eem` gone.
async fn decrypt_event(envelope: &Envelope, event: Event) -> Result<Event, StepError> {
    let mut value = serde_json::to_value(&event)?;
    envelope.decrypt(&mut value).await?;
    if let Some(raw) = value.get_mut("raw") {
        for side in ["new", "old"] {
            if let Some(image) = raw.get_mut(side) {
                envelope.decrypt(image).await?;
            }
        }
    }
    Ok(serde_json::from_value(value)?)
}

/// The results of `work` on `units`, or, past the deadline's cut, a transient error for each.
async fn by_the_cut(
    deadline: Deadline,
    units: &[usize],
    what: &str,
    work: impl std::future::Future<Output = Vec<(usize, Result<Event, StepError>)>>,
) -> Vec<(usize, Result<Event, StepError>)> {
    match deadline.cut_at() {
        Some(cut) => tokio::time::timeout_at(cut, work)
            .await
            .unwrap_or_else(|_| {
                units
                    .iter()
                    .map(|u| {
                        (
                            *u,
                            Err(StepError::transient(format!("deadline: {what} in time"))),
                        )
                    })
                    .collect()
            }),
        None => work.await,
    }
}
