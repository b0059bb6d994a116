//! Desired state: the manifest's images as normalized specs, in dependency order, with the
//! Packer template hashes read from disk.

use crate::graph::DependencyGraph;
use crate::manifest::{Manifest, Source};
use crate::plan::Desired;
use crate::spec::NormalizedSpec;

#[derive(Debug, thiserror::Error)]
#[error("image `{image}`: cannot read Packer template directory `{dir}`")]
pub struct TemplateError {
    pub image: String,
    pub dir: String,
    #[source]
    pub source: std::io::Error,
}

pub fn build(manifest: &Manifest, graph: &DependencyGraph) -> Result<Vec<Desired>, TemplateError> {
    graph
        .order()
        .into_iter()
        .map(|i| {
            let image = &manifest.images[i];
            let template_hash =
                match &image.source {
                    Source::Packer(p) => {
                        let dir = manifest.base_dir.join(&p.path);
                        Some(crate::template_hash::hash_dir(&dir, &p.artifact).map_err(
                            |source| TemplateError {
                                image: image.name.clone(),
                                dir: dir.display().to_string(),
                                source,
                            },
                        )?)
                    }
                    Source::Http(_) => None,
                };
            Ok(Desired::new(NormalizedSpec::of(
                image,
                template_hash.as_ref(),
            )))
        })
        .collect()
}
