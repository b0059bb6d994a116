//! `labctl doctor`: probes a store for everything labctl relies on, one line per check. The
//! probes are the store crate's ([`crate::store::probe`]); this is their view.

use std::process::ExitCode;

use console::style;

use crate::checksum::Checksum;
use crate::cli::DoctorArgs;
use crate::failure::Failure;
use crate::store::probe::{self, Check, Finding, Verdict};
use crate::store::{self};

#[derive(Default)]
struct Checks {
    failed: usize,
    warned: usize,
    /// Whether the apply lock can rely on the store (conditional create enforced).
    lock_works: bool,
}

impl Checks {
    fn report(&mut self, finding: Finding) {
        let name = finding.check.title();
        match finding.verdict {
            Verdict::Holds(detail) => {
                if finding.check == Check::ConditionalCreate {
                    self.lock_works = true;
                }
                println!("{} {name}: {detail}", style("✓").green());
            }
            Verdict::Lacks(detail) => {
                self.warned += 1;
                println!("{} {name}: {detail}", style("!").yellow());
            }
            Verdict::Fails(why) => {
                self.failed += 1;
                println!("{} {name}: {}", style("✗").red(), super::one_line(&why));
            }
        }
    }

    /// The last line: whether labctl can use the store.
    fn verdict(&self) -> String {
        if self.failed == 0 && self.warned == 0 {
            "The store supports everything labctl needs.".to_string()
        } else if self.failed == 0 {
            format!(
                "The store supports everything labctl needs; {} check{} found a limit labctl works around (see above).",
                self.warned,
                if self.warned == 1 { "" } else { "s" }
            )
        } else {
            format!(
                "{} check{} failed.",
                self.failed,
                if self.failed == 1 { "" } else { "s" }
            )
        }
    }
}

pub async fn run(args: &DoctorArgs) -> Result<ExitCode, Failure> {
    let manifest = super::optional_manifest(&args.manifest)?;
    let store = super::open_store(args.store.store.as_deref(), manifest.as_ref()).await?;
    println!("Store: {}", store.url());
    let mut checks = Checks::default();
    let id = Checksum::sha256(
        format!("{}-{}", std::process::id(), crate::timefmt::now_rfc3339()).as_bytes(),
    )
    .hex()[..12]
        .to_string();

    match store::list_all(store.as_ref(), crate::manifest::METADATA_PREFIX).await {
        Ok(listed) => println!(
            "{} credentials and list: {} objects under metadata/",
            style("✓").green(),
            listed.len()
        ),
        Err(e) => {
            println!(
                "{} credentials and list: {}",
                style("✗").red(),
                super::one_line(&e)
            );
            println!("  hint: check the bucket name, endpoint and credentials (E2_ACCESS_KEY/E2_SECRET_KEY or the AWS chain)");
            return Ok(super::exit(1));
        }
    }

    probe::run(&store, &id, |finding| checks.report(finding)).await;
    if !checks.lock_works {
        println!("  hint: apply cannot rely on this store's lock; run applies one at a time (a CI concurrency group) and pass --lock=false");
    }
    println!("{}", checks.verdict());
    Ok(if checks.failed == 0 {
        ExitCode::SUCCESS
    } else {
        super::exit(1)
    })
}
