# The plumber baseline of `make bench` (bench/http.py): the example lm bundle's model
# served by plumber, the way an R user would write it by hand.
#
#   Rscript -e 'plumber::pr_run(plumber::pr("bench/plumber_lm.R"), port = 8001)'
#
# POST /score takes the same body as rscore's /score, {"dataframe_records": [{...}, ...]},
# and answers {"predictions": [...]} at full double precision, so that bench/http.py
# can check that both servers give the same answer before timing either.
#
# A benchmark fixture only: it reads one model file and never validates its input
# beyond what R does; pr_run() listens on 127.0.0.1 unless told otherwise.

# plumber evaluates this file from its own folder (bench/): default relative to that.
model_path <- Sys.getenv("RSCORE_BENCH_MODEL", "../examples/build/mtcars-lm/model.rds")
model <- readRDS(model_path)

#* Score rows given as {"dataframe_records": [...]}.
#* @post /score
#* @serializer json list(digits = NA)
function(req) {
  body <- req$body
  if (is.null(body) || is.null(body$dataframe_records)) {
    body <- jsonlite::fromJSON(req$postBody, simplifyVector = TRUE)
  }
  df <- as.data.frame(body$dataframe_records)
  list(predictions = unname(predict(model, newdata = df)))
}
