//! Arbitrary bytes through the whole spec pipeline: YAML parsing, typed
//! decoding, per-document and set-level validation, and rendering of the
//! diagnostics. Besides "never panics", it checks that every diagnostic
//! points inside the text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let file = Path::new("fuzz.yaml");
    // Line breaks as YAML counts them: LF, CR and CRLF.
    let lines = text.replace("\r\n", "\n").matches(['\n', '\r']).count() + 2;

    let parsed = careplane_spec::parse_documents(file, &text);
    for d in &parsed.diagnostics {
        assert_eq!(d.file, file);
        assert!(
            d.line >= 1 && d.line <= lines,
            "line {} of {lines}: {d}",
            d.line
        );
        assert!(d.column >= 1, "column 0: {d}");
    }
    let _ = careplane_spec::documents_as_json(file, &text);

    match careplane_spec::validate_set(vec![parsed]) {
        Ok(set) => {
            let _ = set.data_dir();
            for t in &set.tenants {
                assert!(
                    set.tier_of(&t.spec).is_some(),
                    "tenant without a tier passed validation"
                );
            }
        }
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty());
            let _ = diagnostics.to_string();
            let _ = serde_json::to_string(&diagnostics).unwrap();
        }
    }
});
